"""The schedule: a list of phases, each with its start, the modules it unfreezes and its lr settings.

Two forms exist:

* :class:`PhaseSpec` is a phase as written, plain data (a dict in Python or YAML): when it starts,
  selectors naming what it unfreezes (see :mod:`finetune_strategies.selectors`), ``lr``,
  ``layer_lr_decay`` and an optional ``name``. The ``phases`` strategy takes a list of them.
* :class:`Phase` is a phase bound to a model: the modules it unfreezes, found when a fit starts.
  Every built-in strategy builds its schedule as a list of them; so can your own strategy.

Phases start in order, at the start of their epoch (epochs count from 0, as
``trainer.current_epoch`` does). A phase's epoch may not come before the previous phase's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import nn

from finetune_strategies.batchnorm import flatten
from finetune_strategies.errors import ScheduleError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.layers import Layer, name_parameters
from finetune_strategies.selectors import check_selector, select_modules
from finetune_strategies.validation import check_epoch, check_known_keys, check_positive_float


class Phase(NamedTuple):
    """Modules that become trainable at the start of ``epoch`` (counted from 0).

    Attributes:
        epoch: When the phase starts.
        label: A short description, also the name of the phase's param group.
        modules: What the phase unfreezes: these modules and everything in them.
        layers: Set by strategies that unfreeze layer by layer: exactly the layers to unfreeze, each
            by its modules' own parameters. When empty, ``modules`` are unfrozen whole.
        lr: The phase's learning rate; ``None`` uses the strategy's.
        layer_lr_decay: The phase's layer-wise decay; ``None`` uses the strategy's.
    """

    epoch: int
    label: str
    modules: tuple[nn.Module, ...]
    layers: tuple[Layer, ...] = ()
    lr: float | None = None
    layer_lr_decay: float | None = None

    def thawed_modules(self) -> list[nn.Module]:
        """The modules whose own parameters the phase makes trainable."""
        if self.layers:
            return [module for layer in self.layers for module in layer.modules]
        return flatten(self.modules)

    def signature(self) -> list[Any]:
        """What identifies the phase in a checkpoint, to detect a changed schedule on resume."""
        return [self.epoch, self.label]


def check_order(phases: Sequence[Phase], owner: str) -> None:
    """Raise :class:`ScheduleError` if a phase starts before the phase listed before it."""
    for index in range(1, len(phases)):
        before, after = phases[index - 1].epoch, phases[index].epoch
        if after < before:
            raise ScheduleError(
                f"{owner}: phase {index} ({phases[index].label}) starts at epoch {after}, before phase "
                f"{index - 1} ({phases[index - 1].label}) at epoch {before}. List phases in the order they start."
            )


def due(phases: Sequence[Phase], started: set[int], epoch: int) -> list[int]:
    """The phases that start at ``epoch``: every one not started yet whose epoch has come."""
    return [index for index, phase in enumerate(phases) if index not in started and phase.epoch <= epoch]


# ---------------------------------------------------------------------------------- the data form
PHASE_KEYS = ("epoch", "modules", "lr", "layer_lr_decay", "name")


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
    """One phase as written. ``modules=None`` unfreezes everything frozen that no earlier phase unfroze."""

    epoch: int
    modules: tuple[str, ...] | None = None
    lr: float | None = None
    layer_lr_decay: float | None = None
    name: str | None = None

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
        if "epoch" not in data:
            raise StrategySpecTypeError(f"{where} needs 'epoch', the epoch (from 0) at which it starts.")
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
        lr = data.get("lr")
        return cls(
            epoch=check_epoch(f"{where}.epoch", data["epoch"]),
            modules=None if modules is None else tuple(modules),
            lr=None if lr is None else check_positive_float(f"{where}.lr", lr),
            layer_lr_decay=check_decay(f"{where}.layer_lr_decay", data.get("layer_lr_decay")),
            name=name,
        )

    def to_dict(self) -> dict[str, Any]:
        """The phase as plain data (the keys it was given)."""
        data: dict[str, Any] = {"epoch": self.epoch}
        for key in PHASE_KEYS[1:]:
            value = getattr(self, key)
            if value is not None:
                data[key] = list(value) if key == "modules" else value
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
    for index in range(1, len(specs)):
        if specs[index].epoch < specs[index - 1].epoch:
            raise StrategySpecError(
                f"phases[{index}] starts at epoch {specs[index].epoch}, before phases[{index - 1}] at epoch "
                f"{specs[index - 1].epoch}. List phases in the order they start."
            )
    return specs


def _inside(name: str, roots: Iterable[str]) -> bool:
    return any(not root or name == root or name.startswith(root + ".") for root in roots)


def bind_phases(specs: Sequence[PhaseSpec], model: nn.Module, frozen: Sequence[tuple[str, nn.Module]]) -> list[Phase]:
    """Resolve each spec's selectors in ``model``; each phase gets what it names that no earlier one got.

    A phase is labelled (and its param group named) by its ``name``, else by what it unfreezes
    (:func:`~finetune_strategies.layers.name_parameters`), e.g. ``backbone.blocks.10 + backbone.blocks.11``.

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
            outside = [name for name, _ in chosen if not _inside(name, roots)]
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
        phases.append(Phase(spec.epoch, label, tuple(m for _, m in chosen), (layer,), spec.lr, spec.layer_lr_decay))
    return phases
