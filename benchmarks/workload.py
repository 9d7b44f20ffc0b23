"""The benchmark workload: a timm backbone with a linear head, on synthetic images made in code.

Two backbones: ``"cnn"`` (``config.model`` at ``config.image_size``, every comparison but one) and
``"vit"`` (``config.vit_model`` built for ``config.vit_image_size``, the per-layer-groups comparison).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.config import BenchConfig

Backbone = Literal["cnn", "vit"]


def image_size(config: BenchConfig, backbone: Backbone) -> int:
    return config.vit_image_size if backbone == "vit" else config.image_size


def make_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer of every variant, the minimal loop included."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


class BenchModel(pl.LightningModule):
    """``backbone`` (timm, pooled features; ``timm_options`` such as ``depth`` go to ``timm.create_model``) and
    ``head`` (Linear). No logging in ``training_step``: the benchmark measures the strategies, not Lightning's
    metric logging."""

    def __init__(self, config: BenchConfig, backbone: Backbone = "cnn", **timm_options: Any) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.backbone: nn.Module
        if backbone == "vit":  # a ViT's position embedding is sized for its images
            size = config.vit_image_size
            self.backbone = timm.create_model(
                config.vit_model, pretrained=False, num_classes=0, img_size=size, **timm_options
            )
        else:
            self.backbone = timm.create_model(config.model, pretrained=False, num_classes=0, **timm_options)
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


def make_dataset(config: BenchConfig, batches: int, backbone: Backbone = "cnn") -> TensorDataset:
    """``batches`` full batches of random images and labels, the same for a given seed."""
    generator = torch.Generator().manual_seed(config.seed)
    n, size = batches * config.batch_size, image_size(config, backbone)
    x = torch.randn(n, 3, size, size, generator=generator)
    y = torch.randint(0, config.num_classes, (n,), generator=generator)
    return TensorDataset(x, y)


def make_loader(
    config: BenchConfig, batches: int, shuffle: bool = False, backbone: Backbone = "cnn"
) -> DataLoader[Any]:
    """A single-process loader; with ``shuffle`` the order is seeded, so two runs see the same batches."""
    generator = torch.Generator().manual_seed(config.seed) if shuffle else None
    dataset = make_dataset(config, batches, backbone)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=shuffle, generator=generator)
