"""What :func:`~finetune_strategies.choose.suggest_layers` compares: the candidates, each a set of layers to tune.

The default candidates of a model (:func:`default_candidates`) are the head alone (``freeze``), the
backbone's layers split into three contiguous ranges (:func:`layer_ranges`: ``first``, ``middle``,
``last``, as ``numpy.array_split`` splits their positions), and every layer (``all``: ``no_freeze``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.errors import StrategySpecError, StrategySpecTypeError
from finetune_strategies.model.layers import Layer
from finetune_strategies.strategies.builtins import SurgicalFinetuning, SurgicalLayers, parse_layers
from finetune_strategies.strategies.registry import resolve_strategy

HEAD_ONLY = "freeze"
"""A candidate value (and the default candidate's name): only the head trains."""
EVERY_LAYER = "no_freeze"
"""A candidate value: everything trains (full fine-tuning)."""
RANGE_NAMES = ("first", "middle", "last")


@dataclass(frozen=True)
class Candidate:
    """One candidate of :func:`~finetune_strategies.choose.suggest_layers`.

    Attributes:
        name: How the evidence calls it (``freeze``, ``first``, ``middle``, ``last``, ``all``, or yours).
        layers: What trains besides the head, as :class:`~finetune_strategies.SurgicalFinetuning` takes it;
            ``None`` when no backbone layer does (the ``freeze`` strategy) or every one does (``full``).
        full: Every layer trains: the ``no_freeze`` strategy.
    """

    name: str
    layers: SurgicalLayers | None = None
    full: bool = False

    @property
    def strategy_name(self) -> str:
        """The strategy a probe of this candidate runs: ``freeze``, ``no_freeze`` or ``surgical``."""
        if self.full:
            return EVERY_LAYER
        return HEAD_ONLY if self.layers is None else "surgical"

    def spec(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The strategy spec (the dict form, YAML-friendly) of this candidate with the strategy ``options``."""
        if self.layers is None:
            return {"strategy": self.strategy_name, **options}
        layers = list(self.layers) if isinstance(self.layers, (list, tuple)) else self.layers
        return {"strategy": "surgical", "layers": layers, **options}


def frozen_layers(model: pl.LightningModule, options: Mapping[str, Any] | None = None) -> list[Layer]:
    """The layers a strategy with ``options`` would freeze (``attr_names`` and ``layer_unit`` among them), bottom
    to top: the positions that ``layers`` and the ranges count."""
    strategy = resolve_strategy(HEAD_ONLY, **dict(options or {}))
    assert isinstance(strategy, FinetuningStrategy)
    return strategy.backbone_layers(model)


def layer_ranges(model: pl.LightningModule, options: Mapping[str, Any] | None = None) -> dict[str, list[int]]:
    """The backbone's layer positions split into three contiguous ranges, named ``first``, ``middle`` and
    ``last``, as ``numpy.array_split(range(n), 3)`` splits them (5 layers: ``[0, 1]``, ``[2, 3]``, ``[4]``).

    Empty ranges are left out: with 2 layers the ranges are ``first`` ``[0]`` and ``last`` ``[1]``, with 1
    layer ``first`` ``[0]``. ``options`` are the strategy options that decide what a layer is (``layer_unit``,
    ``attr_names``)."""
    count = len(frozen_layers(model, options))
    size, extra = divmod(count, len(RANGE_NAMES))
    ranges, start = [], 0
    for index in range(len(RANGE_NAMES)):
        stop = start + size + (1 if index < extra else 0)
        ranges.append(list(range(start, stop)))
        start = stop
    named = dict(zip(RANGE_NAMES, ranges, strict=True))
    if count == 2:  # [0], [1], []: the top layer is the last one, not the middle one
        return {"first": named["first"], "last": named["middle"]}
    return {name: positions for name, positions in named.items() if positions}


def default_candidates(model: pl.LightningModule, options: Mapping[str, Any] | None = None) -> list[Candidate]:
    """``freeze`` (the head alone), the :func:`layer_ranges` (each as a slice such as ``"0:2"``), and ``all``
    (``no_freeze``), in that order: from the fewest trained parameters to the most."""
    ranges = [Candidate(name, f"{p[0]}:{p[-1] + 1}") for name, p in layer_ranges(model, options).items()]
    return [Candidate(HEAD_ONLY), *ranges, Candidate("all", full=True)]


def _candidate(name: str | None, value: Any) -> Candidate:
    if isinstance(value, Candidate):
        return value
    if value == HEAD_ONLY or value is None:
        return Candidate(name or HEAD_ONLY)
    if value == EVERY_LAYER:
        return Candidate(name or "all", full=True)
    choice = parse_layers(value)  # checks the form; positions and selectors are checked on the model
    if name is None:
        name = ", ".join(choice) if isinstance(choice, tuple) else f"layers {value}"
    if isinstance(value, tuple):
        value = list(value)
    return Candidate(name, value)


def parse_candidates(candidates: Any) -> list[Candidate]:
    """Custom candidates: a list of ``layers`` values (as :class:`~finetune_strategies.SurgicalFinetuning` takes
    them; ``"freeze"`` for the head alone, ``"no_freeze"`` for everything) or :class:`Candidate`, or a mapping
    of names to such values."""
    if isinstance(candidates, Mapping):
        parsed = [_candidate(str(name), value) for name, value in candidates.items()]
    elif isinstance(candidates, Sequence) and not isinstance(candidates, str):
        parsed = [_candidate(None, value) for value in candidates]
    else:
        raise StrategySpecTypeError(
            "`candidates` must be a list of layers values (2, '0:2', ['backbone.layer1'], 'freeze', 'no_freeze') "
            f"or a mapping of names to them, got {candidates!r}."
        )
    if not parsed:
        raise StrategySpecError("`candidates` is empty: give at least one, e.g. ['freeze', '0:2', 'no_freeze'].")
    names = [c.name for c in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StrategySpecError(f"`candidates` names {twice} more than once; give each a name of its own (a dict).")
    return parsed


def chosen_layers(model: pl.LightningModule, candidate: Candidate, options: Mapping[str, Any]) -> list[Layer]:
    """The layers ``candidate`` tunes besides the head (every frozen layer for ``full``); raises the
    strategy's own errors (an out-of-range position, a selector outside the frozen modules)."""
    if candidate.full:
        return frozen_layers(model, options)
    if candidate.layers is None:
        return []
    strategy = resolve_strategy(candidate.spec(options))
    assert isinstance(strategy, SurgicalFinetuning)
    return strategy.chosen_layers(model)
