"""A task only the first layer can learn, its data module, and a data module whose test split must never be read."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

QUIET: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "deterministic": True}


class InputShiftNet(pl.LightningModule):
    """Three blocks and a head. The "pretrained" first block reads only inputs 2 and 3, while the labels depend
    on inputs 0 and 1: what the blocks above it see carries nothing about the label, so only a change of the
    first block can fit the data (an input-level shift, as in Lee et al.)."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()
        )
        with torch.no_grad():
            self.backbone[0].weight[:, :2] = 0.0
        self.head = nn.Linear(4, 2)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr, momentum=0.9)


def dataset(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


class ShiftData(pl.LightningDataModule):
    """Train and validation splits; reading the test or predict split fails the test."""

    def __init__(self, n: int = 256, batch_size: int = 32) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size
        self.read: list[str] = []

    def train_dataloader(self) -> DataLoader:
        self.read.append("train")
        return DataLoader(dataset(self.n, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.read.append("val")
        return DataLoader(dataset(self.n // 2, 1), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        raise AssertionError("suggest_layers read the test split")

    def predict_dataloader(self) -> DataLoader:
        raise AssertionError("suggest_layers read the predict split")


class TrainOnly(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(dataset(64, 0), batch_size=32)
