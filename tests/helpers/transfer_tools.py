"""Tiny regression models and data for the transfer-learning tests (real Trainer runs on CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_TRAINER
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BASE_TRAINER: dict[str, Any] = {**QUIET_TRAINER, "max_epochs": 2}


class TinyRegressor(pl.LightningModule):
    """backbone (Linear, Tanh, Linear, Tanh) -> head (Linear); SGD over trainable parameters."""

    def __init__(self, width: int = 8, lr: float = 0.05, init_seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(init_seed)
        self.backbone = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.head = nn.Linear(width, 1)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def regression_data(n: int = 16, seed: int = 0, offset: float = 0.0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return TensorDataset(x, x.sum(dim=1).sin() + offset)


class TinyData(pl.LightningDataModule):
    """``n`` samples, batch size ``batch_size``; ``offset`` shifts the targets."""

    def __init__(self, n: int = 16, batch_size: int = 8, seed: int = 0, offset: float = 0.0) -> None:
        super().__init__()
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.offset = offset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(self.n, self.seed, self.offset), batch_size=self.batch_size)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def under(state: dict[str, torch.Tensor], prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    return ((k, v) for k, v in state.items() if k.startswith(prefix + "."))


class StageSpy(pl.Callback):
    """Per fit: the stage folder, epochs run, weights at start and end, the optimizer's groups,
    batch sizes and trainable parameter names."""

    def __init__(self) -> None:
        self.fits: list[dict[str, Any]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        optimizer = trainer.optimizers[0]
        self.fits.append(
            {
                "dir": trainer.default_root_dir,
                "start": weights(pl_module),
                "optimizer": optimizer,
                "groups": [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups],
                "lrs": [g["lr"] for g in optimizer.param_groups],
                "trainable": sorted(n for n, p in pl_module.named_parameters() if p.requires_grad),
                "schedulers": [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs],
                "epochs": 0,
                "batch_sizes": [],
                "targets": [],
            }
        )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.fits[-1]["batch_sizes"].append(len(batch[0]))
        self.fits[-1]["targets"].extend(batch[1].tolist())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fits[-1]["epochs"] += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fits[-1]["end"] = weights(pl_module)


class FailInStage(pl.Callback):
    """Raises at the end of the first epoch of the fit whose folder ends with ``stage``."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if str(trainer.default_root_dir).endswith(self.stage):
            raise RuntimeError(f"interrupted in {self.stage}")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and the CI machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
