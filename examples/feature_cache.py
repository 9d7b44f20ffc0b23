"""Train a head on a frozen backbone with and without the frozen-feature cache, and compare.

python examples/feature_cache.py --epochs 4
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import FinetuningStrategy, Trainer


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(64, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def run(cache: bool, epochs: int) -> tuple[list[float], torch.Tensor, Any]:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 3, 32, 32, generator=generator), torch.randint(0, 4, (256,)))
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    model, timer = Model(), EpochTimer()
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", callbacks=[timer], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.finetune(model, loader, strategy="freeze", train_bn=False, bn_eval=True, cache_features=cache)
    (strategy,) = (c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))  # type: ignore[attr-defined]
    return timer.seconds, model.head.weight.detach().clone(), strategy.cache_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    plain, plain_head, _ = run(False, args.epochs)
    cached, cached_head, stats = run(True, args.epochs)
    print("epoch seconds without cache:", " ".join(f"{s:.3f}" for s in plain))
    print("epoch seconds with cache:   ", " ".join(f"{s:.3f}" for s in cached))
    later = sum(plain[1:]) / sum(cached[1:])
    print(f"frozen epochs after the first: {later:.1f}x faster with the cache")
    print(f"head weights, largest difference: {(plain_head - cached_head).abs().max().item():.1e}")
    print(f"cache: {stats['backbone']}")


if __name__ == "__main__":
    main()
