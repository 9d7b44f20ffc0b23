"""Write your own strategy as a schedule, register it by name, and use it like a built-in.

python examples/register_strategy.py

The recipe here is not a built-in: train the head with the normalization layers first (a cheap way
to adapt a backbone's statistics), then everything. A strategy is its schedule: a list of
``Phase(epoch, label, modules)``; the shared core does the freezing, the named param groups, the
LR schedulers, resume and DDP.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import FinetuningStrategy, Phase, Trainer, register_strategy

NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


@register_strategy("norms_first")
class NormsFirst(FinetuningStrategy):
    """Unfreeze every normalization layer of the backbone at ``norm_epoch``, the rest at ``full_epoch``."""

    def __init__(self, norm_epoch: int = 1, full_epoch: int = 3, **options: Any) -> None:
        super().__init__(**options)
        self.norm_epoch, self.full_epoch = norm_epoch, full_epoch

    @classmethod
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"norm_epoch": metadata[0], "full_epoch": metadata[1]}  # enables ("norms_first", (1, 3))

    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        backbones = [module for _, module in self.find_modules_to_freeze(pl_module)]
        norms = tuple(m for backbone in backbones for m in backbone.modules() if isinstance(m, NORMS))
        owners = [
            m for backbone in backbones for m in backbone.modules() if next(m.parameters(False), None) is not None
        ]
        rest = tuple(m for m in owners if not isinstance(m, NORMS))
        return [Phase(self.norm_epoch, "norms", norms), Phase(self.full_epoch, "the rest", rest)]


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16)
        )
        self.head = nn.Linear(16, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


def main() -> None:
    data = DataLoader(TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,))), batch_size=8)
    trainer = Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.finetune(Model(), data, strategy=("norms_first", (1, 3)))
    optimizer = trainer.optimizers[0]
    print(f"param groups after training: {len(optimizer.param_groups)}")
    for index, group in enumerate(optimizer.param_groups):
        print(
            f"  group {index} ({group.get('name', 'the model')}): {len(group['params'])} tensors, lr={group['lr']:.4f}"
        )


if __name__ == "__main__":
    main()
