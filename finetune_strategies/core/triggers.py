"""Phases that end when the validation metric says so: the plateau trigger and its watch.

A stage of training is the time between two phase starts. It can end on a **plateau**: the
monitored metric has not improved by ``min_delta`` for ``patience`` validation runs (``max_epochs``
optionally caps the stage's length). The next phase then starts at the start of the next epoch,
after the weights and buffers of the stage's best validation are put back (``restore_best``).

:class:`StageWatch` follows the current stage: its best score and epoch, the validation runs
without improvement, and the in-memory snapshot of the best weights. It is part of the resume
state. Under DDP rank 0's metric decides, and the decision is broadcast, so every rank takes the
same one at the same epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from finetune_strategies.core import distributed
from finetune_strategies.errors import ConfigurationError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.validation import check_bool, check_known_keys, check_positive_float, check_positive_int

Mode = Literal["min", "max"]
PLATEAU_KEYS = ("monitor", "mode", "patience", "min_delta", "max_epochs", "restore_best")


@dataclass(frozen=True)
class Plateau:
    """End a stage when ``monitor`` stops improving (see the module docstring)."""

    monitor: str
    mode: Mode = "min"
    patience: int = 1
    min_delta: float = 0.0
    max_epochs: int | None = None
    restore_best: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise StrategySpecTypeError(f"`monitor` must be the name of a logged metric, got {self.monitor!r}.")
        if self.mode not in ("min", "max"):
            raise StrategySpecError(f"`mode` must be 'min' or 'max', got {self.mode!r}.")
        check_positive_int("patience", self.patience)
        check_positive_float("min_delta", self.min_delta, allow_zero=True)
        if self.max_epochs is not None:
            check_positive_int("max_epochs", self.max_epochs)
        check_bool("restore_best", self.restore_best)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Plateau:
        if isinstance(data, Plateau):
            return data
        if not isinstance(data, dict) or "monitor" not in data:
            raise StrategySpecTypeError(
                f"{where} must be a mapping with at least 'monitor', e.g. {{'monitor': 'val_loss', 'mode': 'min', "
                f"'patience': 2}}, got {data!r}."
            )
        check_known_keys(data, PLATEAU_KEYS, where, error=StrategySpecTypeError)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in PLATEAU_KEYS}

    def describe(self) -> str:
        """``until val_acc plateaus (patience 2, at most 5 epochs)``."""
        cap = f", at most {self.max_epochs} epochs" if self.max_epochs is not None else ""
        return f"until {self.monitor} plateaus (patience {self.patience}{cap})"

    def improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return not math.isnan(value)
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta


def snapshot_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training can change: the trainable parameters and every buffer."""
    with torch.no_grad():
        copies = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
        copies.update({name: b.detach().clone() for name, b in module.named_buffers()})
    return copies


def restore(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`snapshot_of` back into ``module``, in place."""
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    with torch.no_grad():
        for name, value in snapshot.items():
            tensors[name].copy_(distributed.like(value, tensors[name]))  # a whole tensor from a checkpoint


@dataclass
class StageWatch:
    """The current stage's watch on its plateau trigger (resumable)."""

    start_epoch: int = 0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    ended: str | None = None
    """Why the stage ended (``"plateau"``), or None while it runs."""
    snapshot: dict[str, torch.Tensor] | None = None

    def observe(self, improved: bool, value: float, epoch: int, plateau: Plateau, module: nn.Module) -> None:
        """Take one validation run's decision (the same on every rank)."""
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if plateau.restore_best:
                self.snapshot = snapshot_of(module)
        else:
            self.wait += 1
            if self.wait >= plateau.patience:
                self.ended = "plateau"

    def capped(self, epoch: int, plateau: Plateau) -> bool:
        """Whether the stage has run its ``max_epochs`` by the start of ``epoch``."""
        return plateau.max_epochs is not None and epoch - self.start_epoch >= plateau.max_epochs

    def state_dict(self) -> dict[str, Any]:
        return {
            "start_epoch": self.start_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "ended": self.ended,
            "snapshot": distributed.whole(self.snapshot),  # FSDP2 shards, gathered for rank 0's checkpoint
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StageWatch:
        return cls(**{key: state.get(key) for key in ("best", "best_epoch", "ended", "snapshot")},
                   start_epoch=int(state.get("start_epoch", 0)), wait=int(state.get("wait", 0)))  # fmt: skip


@dataclass(frozen=True)
class Transition:
    """A phase start that a trigger decided: when, which phase, why, and the ending stage's best."""

    epoch: int
    phase: int
    label: str
    reason: str
    best: float | None = None
    best_epoch: int | None = None

    def __str__(self) -> str:
        best = f"; best {self.best:.6g} at epoch {self.best_epoch}" if self.best is not None else ""
        return f"epoch {self.epoch}: phase {self.phase} ({self.label}) starts, {self.reason}{best}"


@dataclass(frozen=True)
class Decision:
    """What rank 0 read and decided about one validation run, broadcast to every rank."""

    value: float
    improved: bool
    missing: bool = False
    logged: tuple[str, ...] = ()


def decide(trainer: pl.Trainer, plateau: Plateau, best: float | None) -> Decision:
    """Read ``plateau.monitor`` on rank 0 and broadcast whether it improved; raise if it was not logged."""
    metric = trainer.callback_metrics.get(plateau.monitor)
    if metric is None:
        decision = Decision(math.nan, False, missing=True, logged=tuple(sorted(trainer.callback_metrics)))
    else:
        value = float(metric)
        decision = Decision(value, plateau.improves(value, best))
    decision = trainer.strategy.broadcast(decision, src=0)
    if decision.missing:
        raise ConfigurationError(
            f"The plateau trigger watches {plateau.monitor!r}, which was not logged by this validation run. "
            f"Logged metrics: {', '.join(decision.logged) or 'none'}. Log it in validation_step "
            f"(self.log({plateau.monitor!r}, ...)) or set `monitor` to one of those."
        )
    return decision


def hold_early_stopping(trainer: pl.Trainer) -> None:
    """Keep Lightning's ``EarlyStopping`` callbacks from counting: reset their count and best score, and
    undo a stop one of them decided in this epoch. Strategies call it until their last phase starts."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if not isinstance(callback, EarlyStopping):
            continue
        if trainer.should_stop and callback.stopped_epoch == trainer.current_epoch:
            trainer.should_stop = False
            callback.stopped_epoch = 0
        callback.wait_count = 0
        callback.best_score = torch.tensor(torch.inf if callback.monitor_op == torch.lt else -torch.inf)


def check_validation(trainer: pl.Trainer, pl_module: pl.LightningModule, watched: list[Plateau], owner: str) -> None:
    """Raise before anything trains if plateau triggers watch a fit that runs no validation."""
    if watched and (not is_overridden("validation_step", pl_module) or trainer.limit_val_batches == 0):
        raise ConfigurationError(
            f"{owner} ends a stage when {watched[0].monitor!r} plateaus ({watched[0].describe()}), but this fit "
            f"runs no validation ({type(pl_module).__name__} has no validation_step, or limit_val_batches=0). "
            "Add a validation loop that logs the metric, or give the phases epochs instead."
        )
