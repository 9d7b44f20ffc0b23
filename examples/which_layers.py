"""Which layers to fine-tune: the surgical preset, suggest_layers choosing its layers, and Auto-RGN, on tiny data.

The "pretrained" model reads only inputs 2 and 3 in its first block, and the new task's labels depend on inputs 0
and 1: an input-level shift, which Lee et al. (Surgical Fine-Tuning, ICLR 2023) fix by tuning the first block.
suggest_layers finds that with short probe runs on the validation split; then the suggestion trains. Last,
Auto-RGN trains every layer with its lr scaled by its relative gradient norm, without choosing.

    python examples/which_layers.py --budget_steps 200 --epochs 3
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer, describe_schedule, layer_ranges, resolve_strategy, suggest_layers

QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()
        )
        with torch.no_grad():
            self.backbone[0].weight[:, :2] = 0.0  # "pretrained" to ignore inputs 0 and 1
        self.head = nn.Linear(4, 2)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr, momentum=0.9)


def split(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


class Data(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(split(256, 0), batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(split(128, 1), batch_size=32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_steps", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    # 1. The surgical preset by hand: the first block and the head train, at the head's lr.
    print("layer ranges:", layer_ranges(Net()))
    print(describe_schedule(Net(), ("surgical", {"layers": 0}), max_epochs=1))

    # 2. Let the probes choose (near-ties, within 0.05, go to the candidate that tunes fewer parameters).
    suggestion = suggest_layers(Net(), Data(), budget_steps=args.budget_steps, tolerance=0.05, trainer_kwargs=QUIET)
    print(suggestion)
    print("strategy:", suggestion.strategy)
    print("as phases:", suggestion.phases_strategy)

    # 3. Train with the suggestion.
    trainer = Trainer(max_epochs=args.epochs, **QUIET)
    trainer.finetune(Net(), Data(), strategy=suggestion.strategy)
    print(f"{suggestion.choice}: val_acc {float(trainer.callback_metrics['val_acc']):.3f}")

    # 4. Auto-RGN: everything trains, each layer in its own param group at lr * RGN / max RGN, every step.
    auto_rgn = resolve_strategy({"strategy": "no_freeze", "layer_lr": "auto_rgn"})
    trainer = Trainer(max_epochs=args.epochs, **QUIET)
    trainer.finetune(Net(), Data(), strategy=auto_rgn)
    ratios = ", ".join(f"{name} {ratio:.2f}" for name, ratio in auto_rgn.layer_lr_ratios.items())
    print(f"Auto-RGN: val_acc {float(trainer.callback_metrics['val_acc']):.3f}; last step's lr ratios: {ratios}")


if __name__ == "__main__":
    main()
