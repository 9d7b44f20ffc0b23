"""The frozen-feature cache: frozen epochs with ``cache_features=True`` against the same run without.

Both runs train ``freeze`` (``train_bn=False, bn_eval=True``, which the cache needs) from the same
weights on the same shuffled, seeded data order. Epoch time runs from the first callback's
``on_train_epoch_start`` to the last callback's ``on_train_epoch_end``: data loading included.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.config import BenchConfig
from benchmarks.lightning_runs import make_trainer
from benchmarks.measure import CpuReading, Instruments, Sample
from benchmarks.records import quiet
from benchmarks.variants import HEAD_ONLY
from benchmarks.workload import BenchModel, make_loader
from finetune_strategies import FinetuningStrategy, resolve_strategy


@dataclass
class CacheRun:
    """Epochs of one setting (``cached`` or not), pooled over rounds."""

    cached: bool
    quiet_share: float
    epochs: list[list[Sample]] = field(default_factory=list)  # per round, per epoch (epoch wall time)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    peak_bytes: int = 0
    start_bytes: int = 0

    def first(self) -> tuple[list[Sample], bool]:
        """First epochs (filling the cache, if any) that other processes left alone, else all of them."""
        return quiet([r[0] for r in self.epochs], self.quiet_share, minimum=1)

    @property
    def first_epoch_s(self) -> float:
        return statistics.median(e.step_s for e in self.first()[0])

    def later(self) -> tuple[list[Sample], bool]:
        """Epochs after the first that other processes left alone (at least 2), else all of them."""
        return quiet([e for r in self.epochs for e in r[1:]], self.quiet_share, minimum=2)

    @property
    def later_epoch_s(self) -> float:
        """Median wall time of the epochs after the first (see :meth:`later`)."""
        return statistics.median(e.step_s for e in self.later()[0])

    def to_json(self) -> dict[str, Any]:
        used, quiet_only = self.later()
        return {
            "cached": self.cached,
            "epochs": [[asdict(e) for e in r] for r in self.epochs],
            "first_epoch_s": self.first_epoch_s,
            "later_epoch_median_s": self.later_epoch_s,
            "later_epochs_used": len(used),
            "quiet_only": quiet_only,
            "cache_stats": self.stats,
            "peak_memory_bytes": self.peak_bytes,
            "memory_at_start_bytes": self.start_bytes,
        }


class EpochClock:
    """Epoch wall times, with the share of the CPU that other processes used meanwhile."""

    def __init__(self, tools: Instruments) -> None:
        self.tools = tools
        self.epochs: list[Sample] = []
        self._epoch: tuple[CpuReading | None, float] = (None, 0.0)

    def callbacks(self) -> tuple[Callback, Callback]:
        """The callback to put first and the one to put last."""
        return _EpochStart(self), _EpochStop(self)


class _EpochStart(Callback):
    def __init__(self, clock: EpochClock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock._epoch = self.clock.tools.start()


class _EpochStop(Callback):
    def __init__(self, clock: EpochClock) -> None:
        self.clock = clock

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.epochs.append(self.clock.tools.stop(self.clock._epoch))


def run_cache_once(run: CacheRun, config: BenchConfig, tools: Instruments) -> None:
    """One fit of ``config.cache_epochs`` frozen epochs; appends to ``run``."""
    tools.memory.begin_variant()
    model = BenchModel(config)
    strategy = resolve_strategy("freeze", cache_features=run.cached, **HEAD_ONLY)
    assert isinstance(strategy, FinetuningStrategy)
    epochs = EpochClock(tools)
    first, last = epochs.callbacks()
    loader = make_loader(config, config.cache_batches, shuffle=True)
    make_trainer(tools.device, config.cache_epochs, [first, strategy, last]).fit(model, train_dataloaders=loader)
    run.epochs.append(epochs.epochs)
    run.head = {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
    run.peak_bytes = max(run.peak_bytes, tools.memory.peak())
    run.start_bytes = tools.memory.start_bytes
    if run.cached:
        stats = strategy.cache_stats["backbone"]
        run.stats = {**asdict(stats), "max_bytes": strategy.cache_max_bytes}


@dataclass(frozen=True)
class CacheResult:
    """The comparison the cache target is judged on."""

    uncached: CacheRun
    cached: CacheRun

    @property
    def speedup(self) -> float:
        """Later frozen epochs: uncached time over cached time."""
        return self.uncached.later_epoch_s / self.cached.later_epoch_s

    @property
    def head_max_abs_diff(self) -> float:
        return max(float((self.uncached.head[k] - self.cached.head[k]).abs().max()) for k in self.uncached.head)

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": "freeze, train_bn=False, bn_eval=True",
            "uncached": self.uncached.to_json(),
            "cached": self.cached.to_json(),
            "speedup_later_epochs": self.speedup,
            "head_max_abs_diff": self.head_max_abs_diff,
        }
