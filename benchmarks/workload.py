"""The benchmark workload: a timm backbone with a linear head, on synthetic images made in code."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.config import BenchConfig


def make_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer of every variant, the minimal loop included."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


class BenchModel(pl.LightningModule):
    """``backbone`` (timm, pooled features) and ``head`` (Linear). No logging in ``training_step``:
    the benchmark measures the strategies, not Lightning's metric logging."""

    def __init__(self, config: BenchConfig) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.backbone: nn.Module = timm.create_model(config.model, pretrained=False, num_classes=0)
        features = self.backbone.num_features
        assert isinstance(features, int), "a timm model gives its feature width as `num_features`"
        self.head = nn.Linear(features, config.num_classes)
        self.lr = config.lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer([p for p in self.parameters() if p.requires_grad], self.lr)


def make_dataset(config: BenchConfig, batches: int) -> TensorDataset:
    """``batches`` full batches of random images and labels, the same for a given seed."""
    generator = torch.Generator().manual_seed(config.seed)
    n = batches * config.batch_size
    x = torch.randn(n, 3, config.image_size, config.image_size, generator=generator)
    y = torch.randint(0, config.num_classes, (n,), generator=generator)
    return TensorDataset(x, y)


def make_loader(config: BenchConfig, batches: int, shuffle: bool = False) -> DataLoader[Any]:
    """A single-process loader; with ``shuffle`` the order is seeded, so two runs see the same batches."""
    generator = torch.Generator().manual_seed(config.seed) if shuffle else None
    return DataLoader(make_dataset(config, batches), batch_size=config.batch_size, shuffle=shuffle, generator=generator)
