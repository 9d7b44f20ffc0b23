"""Which layers to fine-tune: :func:`suggest_layers` compares candidates with short probe runs.

Each candidate (:mod:`~finetune_strategies.choose.candidates`) fine-tunes a copy of the model, from the
same weights with the same seed, for the same number of optimizer steps (an equal share of
``budget_steps``), with :class:`~finetune_strategies.SurgicalFinetuning` (``freeze`` for the head alone,
``no_freeze`` for everything) and the same strategy options; then it is scored on the validation split by
the model's own ``validation_step`` metric. The best score wins; near-ties go to the candidate that tunes
fewer parameters. Only the training and validation splits are read. The relative gradient norm of each
layer at the start (``||g|| / ||w||`` of the training loss) is recorded beside the scores as evidence; it
does not decide.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from rich.table import Table
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.choose.candidates import (
    Candidate,
    chosen_layers,
    default_candidates,
    frozen_layers,
    parse_candidates,
)
from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.errors import ConfigurationError, StrategySpecTypeError
from finetune_strategies.model.layers import Layer
from finetune_strategies.model.selectors import is_inside
from finetune_strategies.strategies.registry import resolve_strategy
from finetune_strategies.trainer import Trainer
from finetune_strategies.validation import check_non_negative_int, check_positive_int

Mode = Literal["min", "max"]

DEFAULT_BUDGET_STEPS = 300
"""The optimizer steps of all probes together when ``budget_steps`` is not given."""
RESERVED_TRAINER_KWARGS = (
    "max_steps",
    "max_epochs",
    "min_steps",
    "min_epochs",
    "max_time",
    "check_val_every_n_epoch",
    "val_check_interval",
)
"""Trainer arguments the probes set themselves (their length, and no validation until they end)."""
PROBE_TRAINER: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
"""Trainer settings of the probes unless ``trainer_kwargs`` give others."""
_NO_VALIDATION_DURING_FIT = 10**9


@dataclass(frozen=True)
class CandidateResult:
    """One probe: the candidate, what it trained and its score on the validation split."""

    name: str
    strategy: dict[str, Any]
    layers: list[str]
    """The names of the backbone layers it tuned (none: the head alone)."""
    trainable_params: int
    steps: int
    score: float


@dataclass(frozen=True)
class LayerGradient:
    """A layer's relative gradient norm ``||g|| / ||w||`` of the training loss at the starting weights."""

    name: str
    params: int
    rgn: float


@dataclass(frozen=True)
class Evidence:
    """What the suggestion rests on: the probes, the score before any training, the layers' gradients."""

    candidates: list[CandidateResult]
    start_score: float
    relative_gradient_norms: list[LayerGradient] = field(default_factory=list)


@dataclass(frozen=True)
class LayerSuggestion:
    """What :func:`suggest_layers` found.

    Attributes:
        choice: The name of the chosen candidate.
        strategy: A spec ``Trainer.finetune(..., strategy=...)`` accepts (and, written as YAML, ``fit --strategy
            FILE``): ``{"strategy": "surgical", "layers": "0:2", **options}``, or ``freeze`` / ``no_freeze``
            with the options.
        phases: The same choice as the ``phases`` strategy's list (empty for the head alone); see
            :attr:`phases_strategy` for the whole spec.
        evidence: Each probe's result, the score at the start, and each layer's relative gradient norm.
        budget_steps: The optimizer steps the probes were given together.
        steps_per_candidate: Each probe's share: ``budget_steps // len(candidates)``.
    """

    choice: str
    strategy: dict[str, Any]
    phases: list[dict[str, Any]]
    evidence: Evidence
    budget_steps: int
    steps_per_candidate: int
    monitor: str
    mode: Mode
    seed: int
    tolerance: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def phases_strategy(self) -> dict[str, Any]:
        """:attr:`phases` as a whole ``phases`` spec, at the head's lr as the surgical preset trains (``freeze``
        when the head alone was chosen: a schedule needs a phase)."""
        if not self.phases:
            return {"strategy": "freeze", **self.options}
        return {"strategy": "phases", "phases": self.phases, "initial_denom_lr": 1.0, **self.options}

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for YAML or JSON."""
        data = asdict(self)
        data["phases_strategy"] = self.phases_strategy
        return data

    def table(self) -> Table:
        """A rich table of the evidence: one row per candidate, then the layers' relative gradient norms."""
        better = "lower" if self.mode == "min" else "higher"
        caption = (
            f"{self.steps_per_candidate} steps per candidate (budget {self.budget_steps}), seed {self.seed}; "
            f"{self.monitor} before training: {self.evidence.start_score:.4g} ({better} is better); "
            f"chosen: {self.choice}"
        )
        table = Table(title=f"suggest_layers: {self.monitor} after each probe", caption=caption)
        for column in ("candidate", "layers", "trainable", "steps", self.monitor, ""):
            table.add_column(column, justify="right" if column in ("trainable", "steps", self.monitor) else "left")
        for result in self.evidence.candidates:
            table.add_row(
                result.name,
                _layer_names(result),
                str(result.trainable_params),
                str(result.steps),
                f"{result.score:.4g}",
                "<- chosen" if result.name == self.choice else "",
            )
        return table

    def gradient_table(self) -> Table:
        """A rich table of each layer's relative gradient norm at the start."""
        table = Table(title="relative gradient norm ||g||/||w|| at the start (evidence, does not decide)")
        for column in ("layer", "params", "rgn"):
            table.add_column(column, justify="left" if column == "layer" else "right")
        for layer in self.evidence.relative_gradient_norms:
            table.add_row(layer.name, str(layer.params), f"{layer.rgn:.3g}")
        return table

    def __str__(self) -> str:
        better = "lower" if self.mode == "min" else "higher"
        lines = [
            f"suggest_layers: {self.choice} ({self.monitor}, {better} is better; {self.steps_per_candidate} steps "
            f"per candidate, budget {self.budget_steps}, seed {self.seed})",
            f"  before training: {self.monitor}={self.evidence.start_score:.4g}",
        ]
        for result in self.evidence.candidates:
            mark = "  <- chosen" if result.name == self.choice else ""
            lines.append(
                f"  {result.name}: {self.monitor}={result.score:.4g}, trains {_layer_names(result)} "
                f"({result.trainable_params} params, {result.steps} steps){mark}"
            )
        lines.append("  relative gradient norms at the start (evidence):")
        lines += [f"    {g.name}: {g.rgn:.3g}" for g in self.evidence.relative_gradient_norms]
        return "\n".join(lines)


def _layer_names(result: CandidateResult) -> str:
    if not result.layers:
        return "the head"
    shown = result.layers if len(result.layers) <= 3 else [result.layers[0], "...", result.layers[-1]]
    return f"the head, {' + '.join(shown)}" if result.strategy["strategy"] != "no_freeze" else "everything"


# ---------------------------------------------------------------------------------- the probes
class _Probe(pl.Callback):
    """Counts the optimizer steps and the trainable parameters of a probe; with ``gradients``, keeps each
    parameter's gradient at the first step and drops it, so that the step changes nothing."""

    def __init__(self, gradients: bool = False) -> None:
        self.gradients = gradients
        self.trainable = 0
        self.grads: dict[str, torch.Tensor] = {}

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if trainer.global_step == 0:
            self.trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        if self.gradients:
            for name, param in pl_module.named_parameters():
                if param.grad is not None:
                    self.grads[name] = param.grad.detach().clone()
                    param.grad = None


@contextmanager
def _quiet_and_restored_rng() -> Iterator[None]:
    """Lightning's info logs off, and the global random states (and ``PL_GLOBAL_SEED``) put back after."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    seed_env = os.environ.get("PL_GLOBAL_SEED")
    try:
        yield
    finally:
        logger.setLevel(level)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if seed_env is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed_env


def _copy(model: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of ``model`` without its trainer (the original keeps it)."""
    attached = _lightning.attached_trainer(model)
    if attached is None:
        return copy.deepcopy(model)
    model.trainer = None
    try:
        return copy.deepcopy(model)
    finally:
        model.trainer = attached


def _validate(
    trainer_kwargs: dict[str, Any], model: pl.LightningModule, datamodule: pl.LightningDataModule
) -> dict[str, float]:
    trainer = Trainer(**trainer_kwargs)
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    if not sum(trainer.num_val_batches):
        raise ConfigurationError(
            f"suggest_layers scores on the validation split, and {type(datamodule).__name__}'s val_dataloader has no "
            "batches. Give the data module a validation split."
        )
    return {key: float(value) for metrics in results for key, value in metrics.items()}


def _score(metrics: Mapping[str, float], monitor: str) -> float:
    if monitor in metrics:
        return metrics[monitor]
    found = [key for key in metrics if key.split("/dataloader_idx_")[0] == monitor]
    return metrics[found[0]]


def _fit(
    trainer_kwargs: dict[str, Any],
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    strategy: dict[str, Any],
    steps: int,
    probe: _Probe,
    seed: int,
    epochs: int = -1,
) -> Trainer:
    """Fine-tune ``model`` for ``steps`` optimizer steps; ``epochs`` (the epochs they span) is the run length an
    LR scheduler such as cosine takes its period from (-1: unknown)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    settings = dict(trainer_kwargs)
    callbacks = settings.pop("callbacks", None) or []
    trainer = Trainer(
        **settings,
        max_steps=steps,
        max_epochs=epochs,
        check_val_every_n_epoch=_NO_VALIDATION_DURING_FIT,
        callbacks=[*(callbacks if isinstance(callbacks, list) else [callbacks]), probe],
    )
    trainer.finetune(model, datamodule, strategy=strategy)
    return trainer


def _gradient_norms(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    layers: list[Layer],
    trainer_kwargs: dict[str, Any],
    options: dict[str, Any],
    seed: int,
    batches: int,
) -> tuple[list[LayerGradient], float]:
    """Each layer's ``||g|| / ||w||`` (and the rest of the model's, as ``head``) of the training loss on the first
    ``batches`` batches, at the starting weights: one accumulated step of ``no_freeze`` whose update is dropped.
    Also the training batches per epoch (``inf`` for an iterable dataset without a length)."""
    names = {id(m): n for n, m in model.named_modules()}
    probe = _Probe(gradients=True)
    copied = _copy(model)
    trainer = _fit(
        {**trainer_kwargs, "accumulate_grad_batches": batches},
        copied,
        datamodule,
        {"strategy": "no_freeze", **options},
        1,
        probe,
        seed,
        epochs=1,
    )
    weights = dict(model.named_parameters())
    seen: set[str] = set()
    rows = []
    groups = [(layer.name, [names[id(m)] for m in layer.modules]) for layer in layers]
    for label, modules in groups:
        params = [
            f"{m}.{p}" if m else p for m in modules for p, _ in model.get_submodule(m).named_parameters(recurse=False)
        ]
        seen.update(params)
        rows.append(_rgn(label, params, weights, probe.grads))
    rest = [name for name in weights if name not in seen]
    if rest:
        rows.append(_rgn("head (and the rest)", rest, weights, probe.grads))
    return rows, float(trainer.num_training_batches)


def _epochs(steps: int, batches_per_epoch: float, trainer_kwargs: Mapping[str, Any]) -> int:
    """The epochs ``steps`` optimizer steps span (-1 when an epoch's length is unknown)."""
    steps_per_epoch = batches_per_epoch // int(trainer_kwargs.get("accumulate_grad_batches", 1))
    if not math.isfinite(steps_per_epoch) or steps_per_epoch < 1:
        return -1
    return math.ceil(steps / steps_per_epoch)


def _rgn(
    label: str, params: list[str], weights: Mapping[str, nn.Parameter], grads: Mapping[str, torch.Tensor]
) -> LayerGradient:
    grad = math.sqrt(sum(float(grads[p].double().pow(2).sum()) for p in params if p in grads))
    weight = math.sqrt(sum(float(weights[p].detach().double().pow(2).sum()) for p in params))
    count = sum(weights[p].numel() for p in params)
    return LayerGradient(label, count, grad / weight if weight > 0 else math.inf)


def _module_selectors(model: nn.Module, layers: list[Layer], roots: list[str]) -> list[str]:
    """The fewest module names that hold exactly the parameter-owning modules of ``layers`` (inside ``roots``)."""
    chosen = {id(m) for layer in layers for m in layer.modules if m._parameters}
    selected: list[str] = []
    for name, module in model.named_modules():
        if not is_inside(name, roots) or is_inside(name, selected):
            continue
        owners = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
        if owners and all(id(m) in chosen for m in owners):
            selected.append(name)
    return selected


def _best(results: list[CandidateResult], mode: Mode, tolerance: float) -> CandidateResult:
    def badness(score: float) -> float:
        if math.isnan(score):
            return math.inf
        return score if mode == "min" else -score

    best = min(badness(r.score) for r in results)
    near = [r for r in results if badness(r.score) <= best + tolerance]
    return min(near, key=lambda r: r.trainable_params)  # stable: the earlier candidate among equals


# ---------------------------------------------------------------------------------- the chooser
def suggest_layers(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    *,
    candidates: Any = None,
    budget_steps: int = DEFAULT_BUDGET_STEPS,
    monitor: str = "val_loss",
    mode: Mode = "min",
    options: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    tolerance: float = 0.0,
    gradient_batches: int = 1,
) -> LayerSuggestion:
    """Suggest which layers of ``model`` to fine-tune on ``datamodule``, with short probe runs.

    Each candidate fine-tunes a copy of ``model`` (same starting weights, same ``seed``) for
    ``budget_steps // len(candidates)`` optimizer steps with the surgical preset (``freeze`` for the head alone,
    ``no_freeze`` for everything) and the same strategy ``options``; then the copy is validated and scored by
    ``monitor``. ``model`` itself is not changed, and the global random states are put back.

    Args:
        model: The LightningModule to fine-tune; its ``validation_step`` must log ``monitor``.
        datamodule: Its data; only the training and validation splits are read (never test or predict).
        candidates: ``None`` for :func:`~finetune_strategies.choose.default_candidates` (``freeze``, the
            ``first``, ``middle`` and ``last`` thirds of the backbone's layers, ``all``), or a list of
            ``layers`` values as :class:`~finetune_strategies.SurgicalFinetuning` takes them (``"freeze"``:
            the head alone, ``"no_freeze"``: everything), or a mapping of names to them.
        budget_steps: The optimizer steps of all probes together; each gets an equal share.
        monitor: The validation metric that scores a probe.
        mode: ``"min"`` if lower is better, ``"max"`` if higher is.
        options: Strategy options every probe gets (``train_bn``, ``bn_eval``, ``l2_sp``, ``layer_unit``, ...).
        trainer_kwargs: Arguments of every probe's ``Trainer`` (``accelerator``, ``precision``,
            ``limit_train_batches``, ...); the probes set their length and validation themselves.
        seed: Seeds every probe (``lightning.seed_everything``), so the suggestion is deterministic.
        tolerance: Scores within ``tolerance`` of the best one count as a tie, which goes to the candidate
            that tunes fewer parameters.
        gradient_batches: How many training batches the relative gradient norms are measured on.

    Raises:
        ConfigurationError: before any probe, for a budget smaller than one step per candidate, a data module
            without a validation split, or a ``monitor`` the model does not log (naming what it logs).
        StrategySpecError, StrategySpecTypeError, ScheduleError: for a bad candidate or option.
    """
    if not isinstance(model, pl.LightningModule):
        raise StrategySpecTypeError(f"suggest_layers needs a LightningModule, got {type(model).__name__}.")
    if not isinstance(datamodule, pl.LightningDataModule):
        raise StrategySpecTypeError(
            "suggest_layers needs a LightningDataModule with train and validation splits, got "
            f"{type(datamodule).__name__}."
        )
    if mode not in ("min", "max"):
        raise ConfigurationError(f"`mode` must be 'min' or 'max', got {mode!r}.")
    if not isinstance(monitor, str) or not monitor:
        raise ConfigurationError(f"`monitor` must be the name of a validation metric, got {monitor!r}.")
    budget_steps = check_positive_int("budget_steps", budget_steps)
    seed = check_non_negative_int("seed", seed)
    gradient_batches = check_positive_int("gradient_batches", gradient_batches)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ConfigurationError(f"`tolerance` must be a number >= 0, got {tolerance!r}.")
    options = dict(options or {})
    kwargs = {**PROBE_TRAINER, **dict(trainer_kwargs or {})}
    reserved = sorted(set(kwargs) & set(RESERVED_TRAINER_KWARGS))
    if reserved:
        raise ConfigurationError(
            f"trainer_kwargs {reserved}: the probes set their length (budget_steps) and validate when they end; "
            "leave these out."
        )
    base = resolve_strategy("freeze", **options)  # checks the options
    assert isinstance(base, FinetuningStrategy)
    parsed: list[Candidate] = default_candidates(model, options) if candidates is None else parse_candidates(candidates)
    layers_of = {c.name: chosen_layers(model, c, options) for c in parsed}  # bad positions/selectors raise here
    steps = budget_steps // len(parsed)
    if steps < 1:
        raise ConfigurationError(
            f"budget_steps={budget_steps} is less than one optimizer step for each of the {len(parsed)} candidates "
            f"({', '.join(c.name for c in parsed)}); give budget_steps >= {len(parsed)}."
        )
    if not is_overridden("val_dataloader", datamodule, pl.LightningDataModule):
        raise ConfigurationError(
            f"suggest_layers scores each candidate on the validation split, and {type(datamodule).__name__} has no "
            "val_dataloader. Give it a validation split (it never reads the test split)."
        )
    with _quiet_and_restored_rng():
        pl.seed_everything(seed, workers=True, verbose=False)
        start = _validate(kwargs, _copy(model), datamodule)
        if not any(key.split("/dataloader_idx_")[0] == monitor for key in start):
            raise ConfigurationError(
                f"monitor={monitor!r} is not logged by {type(model).__name__}'s validation_step; it logs "
                f"{sorted(start) or 'nothing'}. Give one of them (--monitor on the command line)."
            )
        start_score = _score(start, monitor)
        gradients, batches_per_epoch = _gradient_norms(
            model, datamodule, frozen_layers(model, options), kwargs, options, seed, gradient_batches
        )
        epochs = _epochs(steps, batches_per_epoch, kwargs)
        results = []
        for candidate in parsed:
            probe = _Probe()
            copied = _copy(model)
            spec = candidate.spec(options)
            trainer = _fit(kwargs, copied, datamodule, spec, steps, probe, seed, epochs)
            score = _score(_validate(kwargs, copied, datamodule), monitor)
            names = [layer.name for layer in layers_of[candidate.name]]
            results.append(CandidateResult(candidate.name, spec, names, probe.trainable, trainer.global_step, score))
    chosen = _best(results, mode, float(tolerance))
    candidate = next(c for c in parsed if c.name == chosen.name)
    if candidate.full:
        phases: list[dict[str, Any]] = [{"epoch": 0}]
    elif candidate.layers is None:
        phases = []
    else:
        roots = base.find_frozen(model).names
        phases = [{"epoch": 0, "modules": _module_selectors(model, layers_of[candidate.name], roots)}]
    return LayerSuggestion(
        choice=chosen.name,
        strategy=chosen.strategy,
        phases=phases,
        evidence=Evidence(results, start_score, gradients),
        budget_steps=budget_steps,
        steps_per_candidate=steps,
        monitor=monitor,
        mode=mode,
        seed=seed,
        tolerance=float(tolerance),
        options=options,
    )
