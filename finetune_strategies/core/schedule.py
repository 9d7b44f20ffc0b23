"""The schedule: a list of phases, each with its start, the modules it unfreezes and its lr settings.

Two forms exist:

* :class:`PhaseSpec` is a phase as written, plain data (a dict in Python or YAML): when it starts,
  selectors naming what it unfreezes (see :mod:`finetune_strategies.model.selectors`), ``lr``,
  ``layer_lr_decay`` and an optional ``name``. The ``phases`` strategy takes a list of them.
* :class:`Phase` is a phase bound to a model: the modules it unfreezes, found when a fit starts.
  Every built-in strategy builds its schedule as a list of them; so can your own strategy.

Phases start in order, at the start of an epoch (epochs count from 0, as ``trainer.current_epoch``
does): at their own ``epoch``, or when the stage before them ends on a plateau of the validation
metric (``after``, see :mod:`finetune_strategies.core.triggers`), whichever comes first. A phase's epoch
may not come before the previous phase's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import nn

from finetune_strategies.core.groups import LrRamp
from finetune_strategies.core.optim import SchedulerSpec, parse_scheduler
from finetune_strategies.core.triggers import Plateau
from finetune_strategies.errors import ScheduleError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.model.batchnorm import flatten
from finetune_strategies.model.layers import Layer, name_parameters
from finetune_strategies.model.selectors import check_selector, is_inside, select_modules
from finetune_strategies.validation import check_bool, check_epoch, check_known_keys, check_positive_float


class Phase(NamedTuple):
    """Modules that become trainable at the start of ``epoch`` (counted from 0), or earlier on a plateau.

    Attributes:
        epoch: When the phase starts; with ``after``, when it starts at the latest (``None``: no limit).
        label: A short description, also the name of the phase's param group.
        modules: What the phase unfreezes: these modules and everything in them.
        layers: Set by strategies that unfreeze layer by layer: exactly the layers to unfreeze, each
            by its modules' own parameters. When empty, ``modules`` are unfrozen whole.
        lr: The phase's learning rate; ``None`` uses the strategy's.
        layer_lr_decay: The phase's layer-wise decay; ``None`` uses the strategy's.
        after: Start once the stage before this phase ends on this plateau trigger.
        lr_scheduler: An LR scheduler spec (:mod:`finetune_strategies.core.optim`) built when the phase starts;
            it replaces the optimizer's schedulers and drives every group at its ratio.
        reset_optimizer_state: Clear the optimizer's per-parameter state (momentum, Adam moments) when
            the phase starts.
        lr_ramp: How the phase's groups' lr moves at every epoch start after the phase starts
            (:class:`~finetune_strategies.core.groups.LrRamp`, the rule of Lightning's ``BackboneFinetuning``).
    """

    epoch: int | None
    label: str
    modules: tuple[nn.Module, ...]
    layers: tuple[Layer, ...] = ()
    lr: float | None = None
    layer_lr_decay: float | None = None
    after: Plateau | None = None
    lr_scheduler: Any = None
    reset_optimizer_state: bool = False
    lr_ramp: LrRamp | None = None

    def thawed_modules(self) -> list[nn.Module]:
        """The modules whose own parameters the phase makes trainable."""
        if self.layers:
            return [module for layer in self.layers for module in layer.modules]
        return flatten(self.modules)

    def signature(self) -> list[Any]:
        """What identifies the phase in a checkpoint, to detect a changed schedule on resume."""
        return [self.epoch, self.label] if self.after is None else [self.epoch, self.label, self.after.describe()]

    def describe_start(self) -> str:
        """When the phase starts, in words: ``at epoch 3``, ``until val_acc plateaus (patience 2)``, ..."""
        if self.after is None:
            return f"at epoch {self.epoch}"
        latest = f", at the latest at epoch {self.epoch}" if self.epoch is not None else ""
        return f"after the stage before it runs {self.after.describe()}{latest}"


def check_order(phases: Sequence[Phase], owner: str) -> None:
    """Raise :class:`ScheduleError` if a phase starts before the one listed before it, or can never start."""
    epochs = [(index, phase) for index, phase in enumerate(phases) if phase.epoch is not None]
    for (i, before), (j, after) in itertools.pairwise(epochs):
        if (after.epoch or 0) < (before.epoch or 0):
            raise ScheduleError(
                f"{owner}: phase {j} ({after.label}) starts at epoch {after.epoch}, before phase {i} "
                f"({before.label}) at epoch {before.epoch}. List phases in the order they start."
            )
    for index, phase in enumerate(phases):
        if phase.epoch is None and phase.after is None:
            raise ScheduleError(
                f"{owner}: phase {index} ({phase.label}) has no epoch, and the stage before it has no plateau "
                "trigger, so it would never start. Give it an `epoch`, or the stage before it an `until`."
            )


# ---------------------------------------------------------------------------------- the data form
PHASE_KEYS = ("epoch", "modules", "lr", "layer_lr_decay", "name", "until", "lr_scheduler", "reset_optimizer_state")


def check_decay(name: str, value: Any) -> float | None:
    """``value`` as a layer-wise lr decay factor in (0, 1], or None."""
    if value is None:
        return None
    factor = check_positive_float(name, value)
    if factor > 1:
        raise StrategySpecError(
            f"`{name}` must be in (0, 1]: each layer below the top gets this factor once more (0.75 is "
            f"timm's and BEiT's default, 1/2.6 ULMFiT's), got {value!r}."
        )
    return factor


@dataclass(frozen=True)
class PhaseSpec:
    """One phase as written. ``modules=None`` unfreezes everything frozen that no earlier phase unfroze.

    ``epoch`` is when it starts; it may be left out when the stage before it ends on a plateau. ``until``
    ends the stage this phase starts: the next phase starts when it plateaus.
    """

    epoch: int | None = None
    modules: tuple[str, ...] | None = None
    lr: float | None = None
    layer_lr_decay: float | None = None
    name: str | None = None
    until: Plateau | None = None
    lr_scheduler: SchedulerSpec | None = None
    reset_optimizer_state: bool = False

    @classmethod
    def from_dict(cls, data: Any, index: int) -> PhaseSpec:
        where = f"phases[{index}]"
        if isinstance(data, PhaseSpec):
            return data
        if not isinstance(data, Mapping):
            raise StrategySpecTypeError(
                f"{where} must be a mapping such as {{'epoch': 2, 'modules': ['backbone.layer4']}}, got {data!r}."
            )
        check_known_keys(data, PHASE_KEYS, where, error=StrategySpecTypeError)
        modules = data.get("modules")
        if modules is not None:
            if isinstance(modules, str):
                modules = [modules]
            if not isinstance(modules, (list, tuple)) or not modules:
                raise StrategySpecTypeError(
                    f"{where}.modules must be a non-empty list of module selectors, e.g. ['backbone.layer4'], "
                    f"got {data['modules']!r}."
                )
            for selector in modules:
                try:
                    check_selector(selector)
                except ScheduleError as error:
                    raise StrategySpecError(f"{where}.modules: {error}") from None
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise StrategySpecTypeError(f"{where}.name must be a non-empty string, got {name!r}.")
        lr, epoch, until, scheduler = (data.get(key) for key in ("lr", "epoch", "until", "lr_scheduler"))
        return cls(
            epoch=None if epoch is None else check_epoch(f"{where}.epoch", epoch),
            modules=None if modules is None else tuple(modules),
            lr=None if lr is None else check_positive_float(f"{where}.lr", lr),
            layer_lr_decay=check_decay(f"{where}.layer_lr_decay", data.get("layer_lr_decay")),
            name=name,
            until=None if until is None else Plateau.from_dict(until, f"{where}.until"),
            lr_scheduler=None if scheduler is None else parse_scheduler(scheduler, f"{where}.lr_scheduler"),
            reset_optimizer_state=check_bool(
                f"{where}.reset_optimizer_state", data.get("reset_optimizer_state", False)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The phase as plain data (the keys it was given)."""
        data: dict[str, Any] = {}
        for key in PHASE_KEYS:
            value = getattr(self, key)
            if value is None or value is False:
                continue
            if key == "modules":
                value = list(value)
            elif key == "until" or key == "lr_scheduler":
                value = value.to_dict()
            data[key] = value
        return data

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        return ", ".join(self.modules) if self.modules is not None else "the rest"


def parse_phases(phases: Any) -> tuple[PhaseSpec, ...]:
    """Check a list of phase dicts (or :class:`PhaseSpec`) and return them in order."""
    if isinstance(phases, (str, bytes, Mapping)) or not isinstance(phases, Iterable):
        raise StrategySpecTypeError(
            f"`phases` must be a list of phases, e.g. [{{'epoch': 2, 'modules': ['backbone.layer4']}}], got {phases!r}."
        )
    specs = tuple(PhaseSpec.from_dict(data, index) for index, data in enumerate(phases))
    if not specs:
        raise StrategySpecError("`phases` is empty: give at least one phase, e.g. [{'epoch': 2}].")
    dated = [(index, spec.epoch) for index, spec in enumerate(specs) if spec.epoch is not None]
    for (i, before), (j, after) in itertools.pairwise(dated):
        if after < before:
            raise StrategySpecError(
                f"phases[{j}] starts at epoch {after}, before phases[{i}] at epoch {before}. "
                "List phases in the order they start."
            )
    return specs


def bind_phases(specs: Sequence[PhaseSpec], model: nn.Module, frozen: Sequence[tuple[str, nn.Module]]) -> list[Phase]:
    """Resolve each spec's selectors in ``model``; each phase gets what it names that no earlier one got.

    A phase is labelled (and its param group named) by its ``name``, else by what it unfreezes
    (:func:`~finetune_strategies.model.layers.name_parameters`), e.g. ``backbone.blocks.10 + backbone.blocks.11``.
    Each phase starts after the ``until`` of the phase before it, if any (the strategy's own plateau
    options give the default, and the stage before the first phase its trigger).

    Raises :class:`ScheduleError` before anything trains when a selector matches nothing (naming the
    closest module names), names a module outside the frozen ones, or a phase has nothing left to unfreeze.
    """
    roots = [name for name, _ in frozen]
    done: set[int] = set()
    phases = []
    for index, spec in enumerate(specs):
        where = f"phases[{index}] ({spec.label})"
        if spec.modules is None:
            chosen = list(frozen)
        else:
            try:
                chosen = select_modules(model, spec.modules)
            except ScheduleError as error:
                raise ScheduleError(f"{where}: {error}") from None
            outside = [name for name, _ in chosen if not is_inside(name, roots)]
            if outside:
                raise ScheduleError(
                    f"{where}: {', '.join(outside)} is not inside the frozen modules ({', '.join(roots) or 'none'}), "
                    "so there is nothing to unfreeze there. Select modules inside them, or freeze more with "
                    "attr_names=[...] (or the model's modules_to_freeze())."
                )
        thawed = [m for m in flatten([m for _, m in chosen]) if id(m) not in done]
        if not any(True for m in thawed for _ in m.parameters(recurse=False)):
            raise ScheduleError(
                f"{where} unfreezes nothing: every module it names was unfrozen by an earlier phase or has no "
                "parameters. Remove it or name other modules."
            )
        done.update(id(m) for m in thawed)
        label = spec.name or name_parameters(model, [p for m in thawed for p in m.parameters(recurse=False)])
        layer = Layer(label, tuple(thawed))
        after = specs[index - 1].until if index else None
        phases.append(
            Phase(
                spec.epoch,
                label,
                tuple(m for _, m in chosen),
                (layer,),
                spec.lr,
                spec.layer_lr_decay,
                after,
                spec.lr_scheduler,
                spec.reset_optimizer_state,
            )
        )
    return phases
