"""Print what each built-in strategy trains at every epoch, measured from real (tiny) runs.

    python examples/strategies_timeline.py --epochs 6

The table in docs/strategies.md is this script's output.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import TrainableMonitor, Trainer


class Model(pl.LightningModule):
    """A four-layer backbone (with BatchNorm) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)
        )
        self.head = nn.Linear(16, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=1e-3)


SPECS: list[Any] = [
    "no_freeze",
    "freeze",
    ("freeze_unfreeze", 2),
    ("unfreeze_milestones", ((2, 4), 2)),
    ("freeze_unfreeze_deepspeed", 2),
    ("gradual_unfreeze", 1),
    {"strategy": "phases", "phases": [{"epoch": 2, "modules": ["backbone.5"]}, {"epoch": 4}]},
    {"strategy": "freeze_unfreeze", "unfreeze_epoch": 2, "layer_lr_decay": 0.5},
]


def timeline(spec: Any, epochs: int, train_bn: bool) -> list[str]:
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,)))
    monitor = TrainableMonitor(log=False)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.finetune(Model(), DataLoader(data, batch_size=8), strategy=spec, train_bn=train_bn)
    cells = []
    for record in monitor.records:
        share = 100 * record.trainable_params / record.total_params
        groups = sum(1 for lr in record.group_lrs if lr > 0)
        cells.append(f"{share:.0f}% ({groups}g)")
    return cells


def _show(spec: Any) -> str:
    if not isinstance(spec, dict):
        return repr(spec)
    if spec["strategy"] == "phases":
        return "phases: backbone.5 at 2, the rest at 4"
    options = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "strategy")
    return f"{spec['strategy']}({options})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-bn", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    header = "| strategy | " + " | ".join(f"epoch {e}" for e in range(args.epochs)) + " |"
    print(header)
    print("|" + "---|" * (args.epochs + 1))
    for spec in SPECS:
        print(f"| `{_show(spec)}` | " + " | ".join(timeline(spec, args.epochs, args.train_bn)) + " |")
    print("\nCells: share of parameters that train, and (Ng) the number of param groups with lr > 0.")


if __name__ == "__main__":
    main()
