"""Write your own strategy as a schedule, register it by name, and use it like a built-in.

python examples/register_strategy.py
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import FinetuningStrategy, Phase, Trainer, list_layers, register_strategy


@register_strategy("gradual")
class GradualUnfreeze(FinetuningStrategy):
    """ULMFiT-style: unfreeze one more layer per epoch, from the top, starting at ``start_epoch``."""

    def __init__(self, start_epoch: int = 1, **options: Any) -> None:
        super().__init__(**options)
        self.start_epoch = start_epoch

    @classmethod
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"start_epoch": metadata}  # enables ("gradual", 2)

    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        layers = list_layers(self.find_modules_to_freeze(pl_module))
        return [
            Phase(self.start_epoch + step, layer.name, layer.modules) for step, layer in enumerate(reversed(layers))
        ]


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


def main() -> None:
    data = DataLoader(TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,))), batch_size=8)
    model = Model()
    trainer = Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.finetune(model, data, strategy=("gradual", 1))
    optimizer = trainer.optimizers[0]
    print(f"param groups after training: {len(optimizer.param_groups)}")
    for index, group in enumerate(optimizer.param_groups):
        print(f"  group {index}: {len(group['params'])} tensors, lr={group['lr']:.4f}")


if __name__ == "__main__":
    main()
