"""The frozen-feature cache: frozen epochs with ``cache_features=True`` against the same run without.

Both runs train ``freeze`` (``train_bn=False, bn_eval=True``, which the cache needs) from the same weights on
the same seeded, shuffled batches, in lockstep one epoch each in turn; epoch ``e`` of one is paired with epoch
``e`` of the other. An epoch's window runs from the first callback's ``on_train_epoch_start`` to the last
callback's ``on_train_epoch_end``: data loading included.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.config import BenchConfig
from benchmarks.lockstep import HandOver, run_ring
from benchmarks.measure import NOT_STARTED, Clock, Instruments, Sample
from benchmarks.results import MIB, Target, evidence, markdown_table, paired_target
from benchmarks.stats import Comparison, PairedComparison
from benchmarks.training import FitClock, trainer_options
from benchmarks.variants import HEAD_ONLY, Variant
from benchmarks.workload import BenchModel, make_loader
from finetune_strategies import FinetuningStrategy, resolve_strategy

LATER_EPOCHS = "epochs after the first"


def _label(cached: bool) -> str:
    return f"cache_features={cached}"


CACHE_COMPARISON = Comparison(
    "cache: frozen epochs after the first >= 20x faster",
    _label(False),
    _label(True),
    LATER_EPOCHS,
    LATER_EPOCHS,
    20.0,
    ">=",
)


class EpochClock(FitClock):
    """Epoch times, with the share of the CPU that other processes used meanwhile; ``hand_over``, if given,
    is called after every epoch."""

    def __init__(self, tools: Instruments, hand_over: HandOver | None = None) -> None:
        self.tools = tools
        self.hand_over = hand_over
        self.epochs: list[Sample] = []
        self._started = NOT_STARTED

    def epoch_start(self, epoch: int) -> None:
        self._started = self.tools.start()

    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(self.tools.stop(self._started))
        if self.hand_over is not None:
            self.hand_over()


@dataclass(frozen=True)
class CacheFit:
    """One fit of ``config.cache_epochs`` frozen epochs."""

    epochs: list[Sample]
    head: dict[str, torch.Tensor]
    stats: dict[str, Any]


def fit_cache(cached: bool, config: BenchConfig, tools: Instruments, hand_over: HandOver | None = None) -> CacheFit:
    model = BenchModel(config)
    strategy = resolve_strategy("freeze", cache_features=cached, **HEAD_ONLY)
    assert isinstance(strategy, FinetuningStrategy)
    clock = EpochClock(tools, hand_over)
    first, last = clock.callbacks()
    loader = make_loader(config, config.cache_batches, shuffle=True)
    pl.Trainer(**trainer_options(tools.device, config.cache_epochs, [first, strategy, last])).fit(model, loader)
    head = {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
    stats = {**asdict(strategy.cache_stats["backbone"]), "max_bytes": strategy.cache_max_bytes} if cached else {}
    return CacheFit(clock.epochs, head, stats)


@dataclass
class CacheSuite:
    """Rounds of the uncached and the cached run in lockstep, and the comparison of their later epochs."""

    config: BenchConfig
    tools: Instruments
    clock: Clock
    name: str = "cache (cache_features=False, True)"
    paired: list[PairedComparison] = field(default_factory=list)
    epochs: dict[bool, list[list[Sample]]] = field(default_factory=lambda: {False: [], True: []})
    """Per setting, per round, the epoch times."""
    head_max_abs_diff: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paired = [PairedComparison(CACHE_COMPARISON, self.clock, self.config.quiet_share)]

    def run_round(self, reverse: bool) -> None:
        def run(cached: bool, hand_over: HandOver) -> CacheFit:
            return fit_cache(cached, self.config, self.tools, hand_over)

        fits = run_ring((True, False) if reverse else (False, True), run)
        for cached, fit in fits.items():
            self.epochs[cached].append(fit.epochs)
        self.paired[0].add_round(fits[False].epochs[1:], fits[True].epochs[1:])
        heads = fits[False].head, fits[True].head
        difference = max(float((heads[0][k] - heads[1][k]).abs().max()) for k in heads[0])
        self.head_max_abs_diff = max(self.head_max_abs_diff, difference)
        self.stats = fits[True].stats

    def median_s(self, cached: bool, first: bool, clock: Clock = "wall") -> float:
        """Median epoch time over rounds: of the first epochs, or of the later ones."""
        rounds = self.epochs[cached]
        epochs = [r[0] for r in rounds] if first else [e for r in rounds for e in r[1:]]
        return statistics.median(e.seconds(clock) for e in epochs)

    def targets(self, variants: dict[str, Variant], judged: bool) -> list[Target]:
        """The speed-up (judged only when ``judged``) and the head weights' agreement with the uncached run."""
        weights = Target(
            "cache: head weights equal uncached within 1e-5",
            "largest abs difference of head weights, cached vs uncached, over rounds",
            self.head_max_abs_diff,
            1e-5,
            "<=",
        )
        return [paired_target(self.paired[0], variants, judged), weights]

    def markdown(self) -> list[str]:
        rows = [[_label(c), f"{self.median_s(c, True):.3f}", f"{self.median_s(c, False):.3f}"] for c in (False, True)]
        header = [
            "freeze (train_bn=False, bn_eval=True)",
            "epoch 0, median over rounds (s)",
            "later epochs, median (s)",
        ]
        interval, stats = self.paired[0].interval(), self.stats
        return [
            *markdown_table(header, rows),
            "",
            f"- Speed-up of frozen epochs after the first, paired epoch by epoch: **{interval.median:.1f}x** "
            f"(95% interval {interval.low:.1f}x-{interval.high:.1f}x; {evidence(self.paired[0])}).",
            f"- Head weights, largest difference from the uncached run: **{self.head_max_abs_diff:.1e}**.",
            f"- Cache: {stats.get('samples', 0)} samples, {stats.get('bytes', 0):,} bytes "
            f"({stats.get('bytes', 0) / MIB:.2f} MiB) of a {stats.get('max_bytes', 0) / MIB:,.0f} MiB bound; "
            f"{stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses, full: {stats.get('full', False)}.",
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": "freeze, train_bn=False, bn_eval=True",
            "epochs": {_label(c): [[asdict(e) for e in r] for r in self.epochs[c]] for c in (False, True)},
            "first_epoch_median_s": {_label(c): self.median_s(c, True) for c in (False, True)},
            "later_epoch_median_s": {_label(c): self.median_s(c, False) for c in (False, True)},
            "speedup_later_epochs": asdict(self.paired[0].interval()),
            "clock": self.clock,
            "head_max_abs_diff": self.head_max_abs_diff,
            "cache_stats": self.stats,
        }
