"""Tiny models, data and a recorder for real Trainer runs on CPU."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer

# The helper and scenario modules (tests/helpers/) import by their bare names, from tests in every folder.
sys.path.insert(0, str(pathlib.Path(__file__).with_name("helpers")))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-full", action="store_true", help="run the soak tests (-m soak) in full: 200 and 40 phase changes"
    )


class TinyClassifier(pl.LightningModule):
    """A backbone (with BatchNorm) and a head; SGD over trainable parameters only."""

    def __init__(self, lr: float = 0.1, optimizer: str = "sgd", scheduler: Any = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.lr = lr
        self.optimizer_name = optimizer
        self.scheduler_factory = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.1)
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        if self.scheduler_factory is None:
            return optimizer
        config = self.scheduler_factory(optimizer)  # a scheduler, or a Lightning scheduler dict
        if not isinstance(config, dict):
            config = {"scheduler": config}
        return {"optimizer": optimizer, "lr_scheduler": {"monitor": "train_loss", **config}}


def make_data(n: int = 32, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    return DataLoader(make_data(n), batch_size=batch_size, shuffle=False)


QUIET_TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "deterministic": True,
    "num_sanity_val_steps": 0,
}
"""Trainer arguments for fast, silent, deterministic CPU test runs."""


def make_trainer(max_epochs: int, **kwargs: Any) -> Trainer:
    return Trainer(max_epochs=max_epochs, **{**QUIET_TRAINER, **kwargs})


class Recorder(pl.Callback):
    """Per epoch: requires_grad per parameter, param groups (by id), their lrs and names, BN modes, and
    weights; per step: every group's lr."""

    def __init__(self) -> None:
        self.requires_grad: list[dict[str, bool]] = []
        self.groups: list[list[list[int]]] = []
        self.group_lrs: list[list[float]] = []
        self.group_names: list[list[str | None]] = []
        self.bn_training: list[dict[str, bool]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.step_lrs: list[list[float]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        optimizer = trainer.optimizers[0]
        self.step_lrs.append([g["lr"] for g in optimizer.param_groups])
        if args[-1] != 0:
            return
        self.requires_grad.append({n: p.requires_grad for n, p in pl_module.named_parameters()})
        self.groups.append([[id(p) for p in g["params"]] for g in optimizer.param_groups])
        self.group_lrs.append([g["lr"] for g in optimizer.param_groups])
        self.group_names.append([g.get("name") for g in optimizer.param_groups])
        self.bn_training.append(
            {n: m.training for n, m in pl_module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def in_tmp_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the test in its ``tmp_path``: LightningCLI writes config.yaml and logs to the working directory.
    CLI test modules use it for every test: ``pytestmark = pytest.mark.usefixtures("in_tmp_path")``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TinyViT(pl.LightningModule):
    """A timm ViT (4 blocks, 32 px, random weights) as ``backbone`` and a linear head; SGD over trainable
    parameters, with an optional scheduler factory as in :class:`TinyClassifier`."""

    def __init__(self, lr: float = 0.1, scheduler: Any = None) -> None:
        super().__init__()
        import timm

        torch.manual_seed(0)
        self.backbone = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=4
        )
        self.head = nn.Linear(self.backbone.num_features, 2)
        self.lr = lr
        self.scheduler_factory = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr, momentum=0.9)
        if self.scheduler_factory is None:
            return optimizer
        config = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": config if isinstance(config, dict) else {"scheduler": config}}


def image_loader(n: int = 8, batch_size: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=generator)
    return DataLoader(TensorDataset(x, torch.arange(n) % 2), batch_size=batch_size, shuffle=False)


class PicklePayload:
    """Unpickling this creates the file ``marker``: what a malicious weight file or checkpoint would do."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[pathlib.Path]]:
        return pathlib.Path.touch, (self.marker,)
