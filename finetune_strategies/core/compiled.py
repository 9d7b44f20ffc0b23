"""Compiled models: what ``torch.compile`` compiled in a LightningModule, and keeping it compiled through
every phase change.

A phase change flips ``requires_grad`` of the parameters it unfreezes. Dynamo guards every compiled graph on
the ``requires_grad`` of the parameters it reads, so the next call after a change fails the guards and
compiles a new graph: the stale graph is never reused (torch 2.14). Measured on torch 2.14 (CPU, a compiled
``forward``): a phase change costs **one** new graph for the training step and **one** for validation (its
``no_grad`` and eval mode are a second set of guards), :data:`GRAPHS_PER_CHANGE`. Dynamo keeps at most
``torch._dynamo.config.recompile_limit`` (8) graphs per compiled function; at the next one it runs that
function eagerly for the rest of the process, with one log warning. A gradual unfreeze of more than three
phases with validation reaches it. Graphs are kept per code object (a class's ``forward``), not per model:
a second model of the same class reuses the first's graphs where the guards pass, and every graph kept counts
against the limit.

:class:`CompileSession` is what a strategy does about it, and no more: when a fit starts it finds the compiled
regions (:func:`find_compiled`); if there are any, it raises ``recompile_limit`` (and
``accumulated_recompile_limit``) by what the schedule's phase changes cost, keeping the previous limit as
headroom, and the graphs already kept for the compiled code; it puts the previous values back when the fit
ends. It never calls ``torch._dynamo.reset()``, which would drop every compiled graph of the process. It
counts the graphs compiled after each phase change
(``torch._dynamo.utils.counters["stats"]["unique_graphs"]``, which counts every graph the process compiles)
and watches dynamo's log for the warning of a limit hit, so that a fall back to eager is reported with its
cause and fix (a :class:`~finetune_strategies.errors.CompileFallbackError` with ``strict_compile``).

:func:`compile_module` compiles a module the way the tasks' ``compile`` option does: in place
(``nn.Module.compile``), so that ``state_dict`` keys gain no ``_orig_mod.`` prefix and checkpoints stay
interchangeable with eager runs.

This is the one module of the library that touches ``torch._dynamo`` (``tests/core/test_compiled.py`` checks it).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import CodeType
from typing import Any, Final, TypeVar

import lightning.pytorch as pl
import torch
import torch._dynamo
import torch._dynamo.convert_frame
import torch._dynamo.utils
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.errors import CompileFallbackError, ModelConfigError

ModuleT = TypeVar("ModuleT", bound=nn.Module)

GRAPHS_PER_CHANGE: Final = 2
"""New graphs a phase change costs each compiled function: one for training, one for validation (measured,
torch 2.14; a run without validation costs one)."""

LIMIT: Final = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
"""The name of dynamo's graph limit per compiled function (``cache_size_limit`` before torch 2.6)."""
ACCUMULATED_LIMIT: Final = f"accumulated_{LIMIT}"
"""Its limit over all compiled functions (not in every torch version)."""

LIMIT_WARNING: Final = "torch._dynamo hit config."
"""How dynamo's warning of a recompile-limit hit starts (``torch/_dynamo/convert_frame.py``)."""

DYNAMO_LOGGER: Final = "torch._dynamo.convert_frame"

COMPILE_ARGUMENTS: Final = tuple(name for name in inspect.signature(torch.compile).parameters if name != "model")
"""The keyword arguments ``torch.compile`` takes besides the model: what ``compile_kwargs`` may hold."""


@dataclass(frozen=True)
class CompiledRegion:
    """A part of a LightningModule that runs compiled: its qualified name (``""``: the LightningModule itself),
    how it was compiled, and the code objects dynamo compiles for it (its graphs are kept on them)."""

    name: str
    how: str
    codes: tuple[CodeType, ...] = field(default=(), compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.name or 'the LightningModule'} ({self.how})"


def _codes(*functions: Any) -> tuple[CodeType, ...]:
    """The code objects of functions and methods (a compiled one's original), skipping what has none."""
    codes = []
    for function in functions:
        function = getattr(function, "_torchdynamo_orig_callable", function)
        code = getattr(getattr(function, "__func__", function), "__code__", None)
        if isinstance(code, CodeType):
            codes.append(code)
    return tuple(codes)


def cached_graphs(regions: list[CompiledRegion]) -> int:
    """The most graphs dynamo keeps for one code object of ``regions``: what counts against its
    ``recompile_limit``. Graphs are kept per code object, so models of one class share them (a second model
    of the class reuses the first's graphs, and adds to the count)."""
    counts = [len(torch._dynamo.eval_frame._debug_get_cache_entry_list(c)) for r in regions for c in r.codes]
    return max(counts, default=0)


def _compiled_function(function: Any) -> bool:
    """Whether ``function`` is what ``torch.compile`` returns for a function or method."""
    return callable(function) and hasattr(function, "_torchdynamo_orig_callable")


def find_compiled(pl_module: nn.Module) -> list[CompiledRegion]:
    """The compiled regions of ``pl_module``, outermost first: a ``torch.compile``\\ d submodule (an
    ``OptimizedModule``, whose insides are not listed again), a module compiled in place (``module.compile()``),
    a module whose ``forward`` is a compiled function, and the LightningModule that ``Trainer.fit`` received
    as ``torch.compile(model)`` (Lightning compiles its ``forward`` and step methods in place)."""
    regions: list[CompiledRegion] = []
    whole = isinstance(pl_module, pl.LightningModule) and _lightning.compiled_by_lightning(pl_module)
    if whole:
        steps = [getattr(type(pl_module), name, None) for name in ("forward", "training_step", "validation_step")]
        regions.append(CompiledRegion("", "torch.compile(lightning_module), unwrapped by the Trainer", _codes(*steps)))
    inside_compiled: list[str] = []
    for name, module in pl_module.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside_compiled) or (whole and module is pl_module):
            continue
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            inner = type(module._orig_mod).forward
            regions.append(CompiledRegion(name, "torch.compile(module)", _codes(inner)))
            inside_compiled.append(name)
        elif getattr(module, "_compiled_call_impl", None) is not None:
            regions.append(CompiledRegion(name, "module.compile()", _codes(type(module).forward)))
        elif _compiled_function(module.__dict__.get("forward")):
            regions.append(CompiledRegion(name, "torch.compile(module.forward)", _codes(module.__dict__["forward"])))
    return regions


def check_compile_kwargs(value: Any, *, error: type[Exception] = ModelConfigError) -> dict[str, Any]:
    """``compile_kwargs`` as a dict of ``torch.compile`` keyword arguments, or an error naming what is wrong."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise error(
            f"`compile_kwargs` must be a mapping of torch.compile arguments, e.g. "
            f'{{"backend": "inductor", "mode": "max-autotune-no-cudagraphs"}}, got {value!r}.'
        )
    unknown = [key for key in value if key not in COMPILE_ARGUMENTS]
    if unknown:
        raise error(
            f"`compile_kwargs` has key(s) {unknown} that torch.compile (torch {torch.__version__}) does not take. "
            f"Allowed keys: {', '.join(COMPILE_ARGUMENTS)}."
        )
    return dict(value)


def compile_module(module: ModuleT, compile_kwargs: Mapping[str, Any] | None = None) -> ModuleT:
    """Compile ``module`` in place (``module.compile(**compile_kwargs)``) and return it.

    In place, not ``torch.compile(module)``: the parameters keep their names (no ``_orig_mod.`` prefix), so
    checkpoints, ``attr_names`` and the layer anatomy are those of the eager model. Compilation happens at the
    first call; a phase change then costs :data:`GRAPHS_PER_CHANGE` graphs, which a strategy's
    :class:`CompileSession` makes room for. An unknown backend or mode is refused here, not at the first step.
    """
    kwargs = check_compile_kwargs(compile_kwargs)
    try:
        module.compile(**kwargs)
    except (RuntimeError, ValueError, TypeError) as failure:  # torch checks backend and mode eagerly
        raise ModelConfigError(f"torch.compile refused compile_kwargs={kwargs!r}: {failure}") from failure
    return module


def compile_option(module: nn.Module, compile: bool, compile_kwargs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``compile`` / ``compile_kwargs`` options of a task (``ImageClassifier``; shared so that every task
    takes them alike): with ``compile``, :func:`compile_module` on ``module``; returns the ``torch.compile``
    arguments used, or ``None`` when not compiled. ``compile_kwargs`` without ``compile`` is refused."""
    if not isinstance(compile, bool):
        raise ModelConfigError(f"`compile` must be True or False, got {compile!r}.")
    kwargs = check_compile_kwargs(compile_kwargs)
    if not compile:
        if compile_kwargs is not None:
            raise ModelConfigError(
                f"`compile_kwargs` ({compile_kwargs!r}) is given but `compile` is False: set compile=True "
                "(--model.compile true) to compile the model, or leave compile_kwargs out."
            )
        return None
    compile_module(module, kwargs)
    return kwargs


def graphs_compiled() -> int:
    """Graphs dynamo compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def frames_seen() -> int | None:
    """Compilations dynamo has counted per frame in this process, which grows with every compilation and which
    only ``torch._dynamo.reset()`` sets back (to 0); ``None`` where torch keeps no such count."""
    counter = getattr(torch._dynamo.convert_frame, "FRAME_COMPILE_COUNTER", None)
    return sum(counter.values()) if isinstance(counter, Mapping) else None


def recompile_budget(phase_changes: int) -> int:
    """Graphs that ``phase_changes`` phase changes add to each compiled function."""
    return phase_changes * GRAPHS_PER_CHANGE


def sized_limit(phase_changes: int, regions: list[CompiledRegion] | None = None) -> int:
    """The ``recompile_limit`` a fit of ``phase_changes`` phase changes sets: the current one, kept as headroom,
    plus the graphs already kept for the regions' code (:func:`cached_graphs`), plus :func:`recompile_budget`."""
    kept = cached_graphs(regions or [])
    return recompile_limit() + kept + recompile_budget(phase_changes)


def recompile_limit() -> int:
    """dynamo's current graph limit per compiled function (:data:`LIMIT`)."""
    return int(getattr(torch._dynamo.config, LIMIT))


class _LimitHits(logging.Filter):
    """Notes dynamo's warnings of a recompile-limit hit, letting every record through."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(LIMIT_WARNING):
            self.hits.append(message.splitlines()[0] + " " + " ".join(message.splitlines()[1:3]).strip())
        return True


@dataclass
class PhaseGraphs:
    """The graphs compiled from the start of a phase (``label``; ``"start"``: the fit's start) to the next."""

    label: str
    graphs: int


@dataclass
class CompileReport:
    """What a fit on a compiled model did: its compiled regions, the limit set, the graphs each phase change
    cost (the first entry, ``"start"``, is the first compilation), and the falls back to eager seen."""

    regions: list[CompiledRegion] = field(default_factory=list)
    recompile_limit: int | None = None
    phases: list[PhaseGraphs] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)

    @property
    def recompiles(self) -> int:
        """Graphs compiled after phase changes (the first compilation not counted)."""
        return sum(p.graphs for p in self.phases[1:])


class CompileSession:
    """One fit's handling of a compiled model (see the module docstring)."""

    def __init__(self) -> None:
        self.report = CompileReport()
        self._saved: dict[str, int] | None = None
        self._filter: _LimitHits | None = None
        self._mark = 0
        self._owner = ""
        self._strict = False
        self._reported = 0
        self._frames: int | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def begin(self, pl_module: nn.Module, phase_changes: int, *, owner: str, strict: bool) -> None:
        """Find the compiled regions; if any, size the recompile limits to ``phase_changes`` and watch for a
        fall back to eager."""
        self.end()
        self.report = CompileReport(regions=find_compiled(pl_module))
        self._owner, self._strict, self._reported = owner, strict, 0
        if not self.report.regions:
            return
        config = torch._dynamo.config
        self._saved = {LIMIT: recompile_limit()}
        if hasattr(config, ACCUMULATED_LIMIT):
            self._saved[ACCUMULATED_LIMIT] = int(getattr(config, ACCUMULATED_LIMIT))
        limit = sized_limit(phase_changes, self.report.regions)
        setattr(config, LIMIT, limit)
        if ACCUMULATED_LIMIT in self._saved:
            added = (limit - self._saved[LIMIT]) * len(self.report.regions)
            setattr(config, ACCUMULATED_LIMIT, self._saved[ACCUMULATED_LIMIT] + added)
        self.report.recompile_limit = limit
        self._filter = _LimitHits()
        logging.getLogger(DYNAMO_LOGGER).addFilter(self._filter)
        self._mark = graphs_compiled()
        self._frames = frames_seen()
        self.report.phases.append(PhaseGraphs("start", 0))
        regions = ", ".join(r.describe() for r in self.report.regions)
        rank_zero_info(
            f"{owner}: compiled {regions}; {phase_changes} phase change(s) cost up to {GRAPHS_PER_CHANGE} graph(s) "
            f"each per compiled function; torch._dynamo.config.{LIMIT} set to {limit} for this fit (was "
            f"{self._saved[LIMIT]})."
        )

    def phase_started(self, label: str) -> None:
        """Close the count of the stage that ends and open the phase's; check that the limit is still ours."""
        if not self.active:
            return
        self._close()
        frames = frames_seen()
        if frames is not None and self._frames is not None and frames < self._frames:
            rank_zero_warn(
                f"{self._owner}: dynamo was reset during the fit (torch._dynamo.reset()): every graph of the process "
                "was dropped and is compiled again. The model stays compiled; the reset costs compile time only. Fix: "
                "do not reset dynamo during a fit; a phase change needs no reset."
            )
        self._frames = frames
        ended = self.report.phases[-1]
        rank_zero_info(
            f"{self._owner}: {ended.graphs} graph(s) compiled in stage {ended.label!r}; phase {label!r} starts."
        )
        self.report.phases.append(PhaseGraphs(label, 0))
        limit = recompile_limit()
        if self.report.recompile_limit is not None and limit < self.report.recompile_limit:
            self._fallback(
                f"torch._dynamo.config.{LIMIT} was lowered to {limit} during the fit (set to "
                f"{self.report.recompile_limit} for this schedule), so the compiled model may run eagerly after "
                f"this phase change. Fix: do not change torch._dynamo.config.{LIMIT} during a fit."
            )
        self.check()
        self._check_kept()

    def check(self) -> None:
        """Report a recompile-limit hit that dynamo logged since the last check."""
        if self._filter is None or len(self._filter.hits) <= self._reported:
            return
        hits = self._filter.hits[self._reported :]
        self._reported = len(self._filter.hits)
        self._fallback(
            f"{hits[0]} - the compiled model now runs EAGERLY (dynamo gave up compiling it). Cause: more graphs "
            f"than the recompile limit {recompile_limit()}; this schedule was given room for "
            f"{GRAPHS_PER_CHANGE} per phase change, so something else recompiles it (changing input shapes or "
            "dtypes, a lowered limit, or a module called with changing Python arguments). Fix: raise "
            f"torch._dynamo.config.{LIMIT}, or see TORCH_LOGS=recompiles for the reason."
        )

    def _check_kept(self) -> None:
        """A fall back that dynamo's log did not show (its logger silenced): a compiled function keeps as many
        graphs as the limit allows, so its next recompile, or the one that just happened, runs eagerly."""
        kept, limit = cached_graphs(self.report.regions), recompile_limit()
        if kept >= limit and not self.report.fallbacks:
            self._fallback(
                f"a compiled function keeps {kept} graphs, the recompile limit {limit}: its next recompile runs it "
                "EAGERLY (dynamo's warning may be silenced). Cause: more recompiles than the schedule's phase changes "
                "explain (changing input shapes or dtypes, or Python arguments). Fix: raise "
                f"torch._dynamo.config.{LIMIT}, or see TORCH_LOGS=recompiles for the reason."
            )

    def end(self, *, check: bool = True) -> None:
        """Close the last count, report a fall back not reported yet (unless ``check`` is False: a fit that
        failed), put the previous limits back and stop watching."""
        if self._saved is None:
            return
        self._close()
        try:
            if check:
                self.check()
                self._check_kept()
        finally:
            self._restore()

    def _restore(self) -> None:
        assert self._saved is not None
        for name, value in self._saved.items():
            setattr(torch._dynamo.config, name, value)
        self._saved = None
        counts = ", ".join(f"{p.label}: {p.graphs}" for p in self.report.phases)
        rank_zero_info(f"{self._owner}: graphs compiled per phase ({counts}); {self.report.recompiles} recompile(s).")
        if self._filter is not None:
            logging.getLogger(DYNAMO_LOGGER).removeFilter(self._filter)
            self._filter = None
        # the code objects do not pickle (a callback is pickled by ddp_spawn, and may be saved by users)
        self.report.regions = [replace(region, codes=()) for region in self.report.regions]

    def _close(self) -> None:
        now = graphs_compiled()
        if self.report.phases:
            self.report.phases[-1].graphs += max(0, now - self._mark)
        self._mark = now

    def _fallback(self, message: str) -> None:
        self.report.fallbacks.append(message)
        text = f"{self._owner}: {message}"
        if self._strict:
            raise CompileFallbackError(f"{text} (strict_compile=True stops the fit here)")
        rank_zero_warn(text)
