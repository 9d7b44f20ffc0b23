"""What trains: a callback that records it at each epoch, for logs, tables and plots.

:class:`TrainableMonitor` is the one place that measures it; the demo and the transfer-learning
runner build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning.pytorch as pl
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from finetune_strategies.core.distributed import numel


def trainable_fraction(module: nn.Module, *, skip_batchnorm: bool = False) -> float:
    """The share of ``module``'s parameter values that require grad (0.0 without parameters).

    ``skip_batchnorm`` leaves BatchNorm layers out: they may train in a frozen module (``train_bn``).
    """
    params = [
        p
        for m in module.modules()
        if not (skip_batchnorm and isinstance(m, _BatchNorm))
        for p in m.parameters(recurse=False)
    ]
    total = sum(numel(p) for p in params)
    return sum(numel(p) for p in params if p.requires_grad) / total if total else 0.0


@dataclass
class EpochRecord:
    """What was trainable during one epoch (read at its first training batch)."""

    epoch: int
    trainable_params: int
    total_params: int
    trainable_modules: dict[str, bool] = field(default_factory=dict)
    """For each top-level child with parameters: whether any of them requires grad."""
    group_lrs: list[float] = field(default_factory=list)
    """The lr of every param group of every optimizer."""
    group_names: list[str | None] = field(default_factory=list)
    """The ``"name"`` of every param group (``None`` where a group has none), in the order of ``group_lrs``."""
    trainable_fractions: dict[str, float] = field(default_factory=dict)
    """For each top-level child with parameters: the share of its parameter values that train."""
    transitions: list[str] = field(default_factory=list)
    """The phase starts a trigger decided at this epoch (the strategy's ``transitions``), as text."""

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params


class TrainableMonitor(pl.Callback):
    """Record, and log as ``trainable_params``, how much of the model trains at each epoch.

    A record is taken at the first training batch of each epoch, after every epoch-start hook ran
    (so after a strategy unfroze what it unfreezes that epoch). ``skip_batchnorm`` leaves BatchNorm
    layers out of ``trainable_fractions``.
    """

    def __init__(self, log: bool = True, *, skip_batchnorm: bool = False) -> None:
        self.log = log
        self.skip_batchnorm = skip_batchnorm
        self.records: list[EpochRecord] = []

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> EpochRecord:
        """What trains now, as a record of the current epoch."""
        params = list(pl_module.parameters())
        children = [
            (name, child) for name, child in pl_module.named_children() if any(True for _ in child.parameters())
        ]
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        strategies = [c for c in trainer.callbacks if hasattr(c, "transitions")]  # type: ignore[attr-defined]
        transitions = [str(t) for s in strategies for t in s.transitions if t.epoch == trainer.current_epoch]
        return EpochRecord(
            epoch=trainer.current_epoch,
            trainable_params=sum(numel(p) for p in params if p.requires_grad),
            total_params=sum(numel(p) for p in params),
            trainable_modules={name: any(p.requires_grad for p in child.parameters()) for name, child in children},
            group_lrs=[float(g["lr"]) for g in groups],
            group_names=[g.get("name") for g in groups],
            trainable_fractions={
                name: trainable_fraction(child, skip_batchnorm=self.skip_batchnorm) for name, child in children
            },
            transitions=transitions,
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records = []

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if self.records and self.records[-1].epoch == trainer.current_epoch:
            return
        record = self.measure(trainer, pl_module)
        self.records.append(record)
        if self.log:
            pl_module.log("trainable_params", float(record.trainable_params), on_step=False, on_epoch=True)

    def transition_epochs(self) -> list[int]:
        """Epochs at which a trigger started a phase (for plots: mark them)."""
        return [r.epoch for r in self.records if r.transitions]

    def frozen_epochs(self, module: str = "backbone") -> list[int]:
        """Epochs in which ``module`` had no trainable parameter."""
        return [r.epoch for r in self.records if not r.trainable_modules.get(module, True)]
