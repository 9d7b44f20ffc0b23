"""From Lightning's fine-tuning callbacks to strategies: each "before" and its "after", run on the same tiny
model and data, with the largest weight difference between them.

    python examples/migrate_from_lightning.py

* ``BackboneFinetuning(...)`` becomes ``("backbone_finetuning", N)`` or ``BackboneFinetuningStrategy(...)``
  with the same arguments.
* A ``BaseFinetuning`` subclass (``freeze_before_training`` + ``finetune_function``) becomes a schedule:
  ``{"strategy": "phases", ...}``, one phase per unfreeze, with its lr.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import BackboneFinetuningStrategy, Trainer


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


# ---------------------------------------------------------------- before: a BaseFinetuning subclass
class TopThenRest(BaseFinetuning):
    """Unfreeze the backbone's top layer at epoch 1 (lr 0.01), the rest at epoch 3 (group 0's lr / 10)."""

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.backbone[2], optimizer, lr=0.01)
        if epoch == 3:
            self.unfreeze_and_add_param_group(pl_module.backbone[0], optimizer)  # lr: group 0's / 10


# ---------------------------------------------------------------- after: the same schedule as data
TOP_THEN_REST = {
    "strategy": "phases",
    "phases": [{"epoch": 1, "modules": ["backbone.2"], "lr": 0.01}, {"epoch": 3, "modules": ["backbone.0"]}],
}

PAIRS: dict[str, tuple[Any, Any]] = {
    # name -> (Lightning's callback, the strategy that replaces it)
    "BackboneFinetuning": (
        lambda: BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5),
        lambda: BackboneFinetuningStrategy(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5),
    ),
    "BaseFinetuning subclass": (TopThenRest, lambda: TOP_THEN_REST),
}


def fit(callback_or_spec: Any, epochs: int) -> tuple[Model, list[list[float]]]:
    data = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=data)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    model, lrs = Model(), []

    class Lrs(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            lrs.append([round(group["lr"], 6) for group in trainer.optimizers[0].param_groups])

    quiet: dict[str, Any] = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False}
    quiet |= {"enable_progress_bar": False, "enable_model_summary": False, "deterministic": True}
    if isinstance(callback_or_spec, BaseFinetuning) and not hasattr(callback_or_spec, "training_options"):
        pl.Trainer(max_epochs=epochs, callbacks=[callback_or_spec, Lrs()], **quiet).fit(model, loader)
    else:
        Trainer(max_epochs=epochs, callbacks=[Lrs()], **quiet).finetune(model, loader, strategy=callback_or_spec)
    return model, lrs


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)
    differences = {}
    for name, (before, after) in PAIRS.items():
        theirs, their_lrs = fit(before(), args.epochs)
        ours, our_lrs = fit(after(), args.epochs)
        weights = zip(theirs.state_dict().values(), ours.state_dict().values(), strict=True)
        differences[name] = max((a - b).abs().max().item() for a, b in weights)
        print(f"{name}: lrs per epoch, Lightning {their_lrs}")
        print(f"{' ' * len(name)}  finetune-strategies    {our_lrs}")
        print(f"{' ' * len(name)}  max weight difference: {differences[name]:.2g}")
    return differences


if __name__ == "__main__":
    main()
