"""See a schedule before training: :func:`describe_schedule` and the ``explain`` CLI subcommand.

The plan is made by the strategy's own code, not by a description of it: the model is frozen by
the strategy, its optimizer is built by its ``configure_optimizers`` and handed to the strategy as
in a fit, and each epoch the strategy's ``advance`` starts the phases and adds the param groups,
as ``on_train_epoch_start`` does in a fit. Epoch-interval LR schedulers step once per epoch, and
step-interval ones ``steps_per_epoch`` times. The model's ``requires_grad`` flags and BatchNorm
settings are put back afterwards; its weights are never changed.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig
from rich.table import Table
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.compiled import GRAPHS_PER_CHANGE, find_compiled, recompile_budget, sized_limit
from finetune_strategies.core.schedule import Phase
from finetune_strategies.errors import ConfigurationError, ModelConfigError
from finetune_strategies.model.layers import LayerUnit, list_layers
from finetune_strategies.strategies.registry import StrategySpec, resolve_strategy
from finetune_strategies.validation import check_positive_int

OptimizerFactory = Callable[[list[nn.Parameter]], Optimizer]
AUTO_RGN_NOTE = (
    'layer_lr="auto_rgn": the lrs shown are the scheduled ones; every optimizer step trains each group with '
    "gradients at its lr times its relative gradient norm ||g|| / ||w|| over the largest group's (so at most "
    "the lr shown), and puts the scheduled lr back after the step."
)


@dataclass(frozen=True)
class GroupRow:
    """One param group in an epoch: its name (``None`` for the model's own groups), lr and size."""

    index: int
    name: str | None
    lr: float
    params: int


@dataclass(frozen=True)
class EpochPlan:
    """What trains in one epoch: parts of the model with their trainable parameter counts, and the groups."""

    epoch: int
    training: list[tuple[str, int]]
    trainable_params: int
    total_params: int
    groups: list[GroupRow]
    started: list[str] = field(default_factory=list)
    """Labels of the phases that start at this epoch."""


@dataclass(frozen=True)
class SchedulePlan:
    """The per-epoch plan of a strategy on a model (see :func:`describe_schedule`).

    A phase that starts on a plateau of the validation metric is placed at the latest epoch it can
    start (its epoch, or its stage's ``max_epochs``); ``starts`` says when each phase starts, in words.
    """

    strategy: str
    epochs: list[EpochPlan]
    starts: list[str] = field(default_factory=list)
    frozen: str = ""
    """What the strategy freezes and how it found it
    (:meth:`~finetune_strategies.model.roots.FrozenModules.describe`)."""
    recompiles: int = 0
    """Graphs the schedule's phase changes cost each compiled function when the model is compiled
    (:func:`~finetune_strategies.core.compiled.recompile_budget`)."""
    compiled: str = ""
    """The compiled regions of the model and what its phase changes cost, in words."""
    layer_lr: str = ""
    """How the lrs shown change within each step (``layer_lr="auto_rgn"``), in words."""

    def table(self) -> Table:
        """A rich table: one row per epoch."""
        notes = [note for note in (self.frozen, self.layer_lr, self.compiled) if note]
        caption = "\n".join(notes + [f"phase {i}, {text}" for i, text in enumerate(self.starts)]) or None
        table = Table(title=f"{self.strategy}: what trains, epoch by epoch", caption=caption)
        for column in ("epoch", "starts", "trains", "trainable", "param groups (lr)"):
            table.add_column(column, justify="right" if column in ("epoch", "trainable") else "left")
        for row in self.epochs:
            groups = ", ".join(f"{g.name or f'group {g.index}'}: {g.lr:.3g}" for g in row.groups)
            table.add_row(
                str(row.epoch),
                "; ".join(row.started),
                ", ".join(f"{name} ({_count(n)})" for name, n in row.training) or "nothing",
                f"{_count(row.trainable_params)} / {_count(row.total_params)}",
                groups,
            )
        return table

    def __str__(self) -> str:
        notes = (self.frozen, self.layer_lr, self.compiled)
        lines = [f"{self.strategy}:", *(f"  {note}" for note in notes if note)]
        lines += [f"  phase {i}, {text}" for i, text in enumerate(self.starts)]
        for row in self.epochs:
            groups = ", ".join(f"{g.name or f'group {g.index}'}={g.lr:.3g}" for g in row.groups)
            started = f" starts {'; '.join(row.started)};" if row.started else ""
            trains = ", ".join(name for name, _ in row.training) or "nothing"
            lines.append(f"  epoch {row.epoch}:{started} trains {trains}; groups {groups}")
        return "\n".join(lines)


def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class _Flags:
    """``requires_grad`` of every parameter and the BatchNorm settings a strategy changes, to put back."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [(p, p.requires_grad) for p in model.parameters()]
        self.norms = [(m, m.track_running_stats, m.training) for m in model.modules() if isinstance(m, _BatchNorm)]

    def restore(self) -> None:
        for param, requires_grad in self.params:
            param.requires_grad_(requires_grad)
        for module, track, training in self.norms:
            module.track_running_stats = track
            module.train(training)


def _trains(params: list[nn.Parameter]) -> bool:
    return bool(params) and all(p.requires_grad for p in params)


def _own_non_bn(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules if not isinstance(m, _BatchNorm) for p in m.parameters(recurse=False)]


def _training(model: pl.LightningModule, unit: LayerUnit) -> list[tuple[str, int]]:
    """The top-level parts of ``model`` that train; a part that trains only in part is broken down into
    its layers (in ``unit``) that train, and a layer that trains only in part (a head beside a frozen
    pooler) into its modules that train. BatchNorm parameters are counted apart: ``train_bn`` decides
    whether they train, not the schedule."""
    parts: list[tuple[str, int]] = []
    names = {id(m): n for n, m in model.named_modules()}
    for name, child in model.named_children():
        params = _own_non_bn(child.modules())
        if _trains(params):
            parts.append((name, sum(p.numel() for p in params)))
        elif any(p.requires_grad for p in params):
            for layer in list_layers([(name, child)], unit):
                own = _own_non_bn(layer.modules)
                if _trains(own):
                    parts.append((layer.name, sum(p.numel() for p in own)))
                    continue
                for module in layer.modules:
                    mine = _own_non_bn([module])
                    if _trains(mine):
                        parts.append((names[id(module)], sum(p.numel() for p in mine)))
    bn = [p for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters(recurse=False)]
    if any(p.requires_grad for p in bn):
        parts.append(("BatchNorm", sum(p.numel() for p in bn if p.requires_grad)))
    return parts


class _PlanTrainer(pl.Trainer):
    """The trainer a plan attaches while ``configure_optimizers`` runs: it has no data, so it answers
    ``estimated_stepping_batches`` (Lightning's recommended ``OneCycleLR(total_steps=...)``) from the plan's
    epochs and ``steps_per_epoch``, where a plain trainer would say -1."""

    def __init__(self, steps_per_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps_per_epoch = steps_per_epoch

    @property
    @override
    def estimated_stepping_batches(self) -> int | float:
        assert self.max_epochs is not None
        return self.max_epochs * self.steps_per_epoch


def _optimizer(
    model: pl.LightningModule, factory: OptimizerFactory | None, max_epochs: int, steps_per_epoch: int
) -> _lightning.ParsedOptimizers:
    if factory is not None:
        return _lightning.ParsedOptimizers([factory([p for p in model.parameters() if p.requires_grad])], [], [])
    trainer = _PlanTrainer(
        steps_per_epoch,
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    previous = _lightning.attached_trainer(model)
    model.trainer = trainer
    try:
        return _lightning.parse_optimizers(model.configure_optimizers())
    except (ModelConfigError, ConfigurationError, RuntimeError, TypeError) as error:
        raise ConfigurationError(
            f"describe_schedule could not build {type(model).__name__}'s optimizer outside a fit ({error}). "
            "Pass optimizer=lambda params: torch.optim.SGD(params, lr=...) to plan with another one."
        ) from error
    finally:
        model.trainer = previous


def describe_schedule(
    model: pl.LightningModule,
    strategy: StrategySpec = "no_freeze",
    *,
    max_epochs: int,
    optimizer: OptimizerFactory | None = None,
    steps_per_epoch: int = 1,
    **options: Any,
) -> SchedulePlan:
    """The plan of ``strategy`` on ``model`` for ``max_epochs`` epochs: per epoch, what trains (with
    parameter counts), which phases start, and every param group's lr at the epoch's first step.

    Args:
        model: The LightningModule to plan for. Its weights are not changed, and its ``requires_grad``
            flags and BatchNorm settings are restored afterwards.
        strategy: Any strategy spec (see :func:`~finetune_strategies.resolve_strategy`). A callback
            instance is used as is.
        max_epochs: How many epochs to plan.
        optimizer: Builds the optimizer from the trainable parameters. By default the model's
            ``configure_optimizers`` builds it (with a trainer of ``max_epochs`` attached), with its
            LR schedulers.
        steps_per_epoch: How often step-interval LR schedulers step per epoch.
        options: Strategy options, as for :func:`~finetune_strategies.resolve_strategy`.
    """
    max_epochs = check_positive_int("max_epochs", max_epochs)
    steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
    callback = resolve_strategy(strategy, **options)
    if not isinstance(callback, FinetuningStrategy):
        raise ConfigurationError(
            f"describe_schedule plans finetune-strategies strategies; {type(callback).__name__} is another "
            "BaseFinetuning callback."
        )
    if getattr(callback, "injects_adapters", False):
        model = copy.deepcopy(model)  # plan on a copy: the strategy adds adapter modules to the model
    flags = _Flags(model)
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        callback.prepare(model)
        optimizers, schedulers, intervals = _optimizer(model, optimizer, max_epochs, steps_per_epoch)
        built = optimizers[callback.optimizer_index]
        configs = [LRSchedulerConfig(s, interval=i) for s, i in zip(schedulers, intervals, strict=True)]
        callback.attach_optimizer(built, configs)
        epochs = []
        for epoch in range(max_epochs):
            started_before = set(callback.started_phases)
            callback.advance(model, epoch, built, run=(max_epochs, steps_per_epoch))
            started = [_started(callback.schedule[i]) for i in sorted(set(callback.started_phases) - started_before)]
            epochs.append(_epoch_plan(model, callback, epoch, built, started))
            _step(callback.lr_scheduler_configs, steps_per_epoch)
        starts = [f"{phase.label}: {phase.describe_start()}" for phase in callback.schedule]
        frozen = callback.find_frozen(model).describe() if callback.freezes else ""
    finally:
        callback.finish()
        flags.restore()
        logger.setLevel(level)
    changes = sum(1 for row in epochs if row.started)
    compiled = _compiled(model, changes, len(starts))
    layer_lr = AUTO_RGN_NOTE if callback.layer_lr == "auto_rgn" else ""
    return SchedulePlan(type(callback).__name__, epochs, starts, frozen, recompile_budget(changes), compiled, layer_lr)


def _compiled(model: pl.LightningModule, changes: int, phases: int) -> str:
    """What the phase changes cost a compiled model, in words."""
    regions = find_compiled(model)
    where = (
        f"compiled: {', '.join(r.describe() for r in regions)}"
        if regions
        else "not compiled; if compiled (--model.compile true)"
    )
    limit = sized_limit(phases, regions)
    return (
        f"{where}: {changes} phase change(s) cost {recompile_budget(changes)} recompile(s) per compiled function "
        f"({GRAPHS_PER_CHANGE} each: training and validation); the fit raises dynamo's recompile_limit to {limit}."
    )


def _started(phase: Phase) -> str:
    if phase.after is None:
        return phase.label
    return f"{phase.label} (at the latest; or earlier, {phase.after.describe()})"


def _epoch_plan(
    model: pl.LightningModule, strategy: FinetuningStrategy, epoch: int, optimizer: Optimizer, started: list[str]
) -> EpochPlan:
    params = list(model.parameters())
    groups = [
        GroupRow(i, g.get("name"), float(g["lr"]), sum(p.numel() for p in g["params"]))
        for i, g in enumerate(optimizer.param_groups)
    ]
    return EpochPlan(
        epoch=epoch,
        training=_training(model, strategy.layer_unit or strategy.default_layer_unit),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        groups=groups,
        started=started,
    )


def _step(configs: Iterable[LRSchedulerConfig], steps_per_epoch: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no optimizer.step() ran: torch warns about the order
        for config in list(configs):
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                continue  # needs a metric: it changes nothing in a plan
            for _ in range(steps_per_epoch if config.interval == "step" else 1):
                config.scheduler.step()
