"""The statistics of a paired comparison: pair ratios, their median with a confidence interval, a verdict.

Two variants run in lockstep (:mod:`benchmarks.lockstep`), so step ``i`` of one and step ``i`` of
the other are measured within a second of each other, under the same load. A *pair* is those two
steps; its ratio ``a / b`` is free of the drift that moves the machine's speed over seconds and
minutes. A *round* is one lockstep run of fresh models; a comparison pools the pairs of several
rounds.

**The statistic** is the median of the pooled pair ratios (a ratio of step times is skewed: other
processes only ever slow a step down, so a few pairs are far off; the median ignores them).

**The interval** is a two-stage (cluster) bootstrap of that median: draw the rounds with
replacement, then each drawn round's pairs with replacement, take the median of what was drawn, and
repeat; the interval is the central ``confidence`` share of those medians. Pairs of one round are
not independent: they share the models' memory, the allocator's state and the load of that minute,
and such effects move whole rounds by a percent or two on a shared machine (by five before the
threads shared one malloc arena, see :func:`benchmarks.measure.single_malloc_arena`). An
interval from the pairs alone (a sign-test or Wilcoxon interval) would count a round's pairs as
independent evidence and come out too narrow, so two runs of the same commit could give
non-overlapping intervals; drawing whole rounds puts the spread between rounds into the interval.
The draws use a fixed seed, so the same measurements always give the same interval.

**The verdict** for a goal ``ratio <= goal``: *pass* when the interval's upper end is within the goal,
*miss* when its lower end exceeds it, *inconclusive* when the interval contains the goal (mirrored
for ``>=``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from benchmarks.measure import Clock, Sample, quantile, quiet_or_all

Direction = Literal["<=", ">="]
Verdict = Literal["pass", "miss", "inconclusive", "not judged (smoke size)"]

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
MIN_QUIET_PAIRS = 3
"""A round's quiet pairs are used alone when there are at least this many; else all of its pairs."""


@dataclass(frozen=True)
class Pair:
    """Step ``i`` of variant A and of variant B in one round: ``ratio = a / b``; ``quiet`` when other
    processes used at most the threshold share of the CPU during both steps."""

    a_s: float
    b_s: float
    quiet: bool

    @property
    def ratio(self) -> float:
        return self.a_s / self.b_s


def pair_up(a: Sequence[Sample], b: Sequence[Sample], threshold: float, clock: Clock = "wall") -> list[Pair]:
    """Step ``i`` of ``a`` with step ``i`` of ``b`` (both from the same lockstep round), timed by ``clock``."""
    if len(a) != len(b):
        raise ValueError(f"paired runs must have as many steps each, got {len(a)} and {len(b)}.")
    return [
        Pair(x.seconds(clock), y.seconds(clock), x.quiet(threshold) and y.quiet(threshold))
        for x, y in zip(a, b, strict=True)
    ]


def usable(pairs: Sequence[Pair], minimum: int = MIN_QUIET_PAIRS) -> tuple[list[Pair], bool]:
    """A round's quiet pairs and True when there are at least ``minimum``; else all its pairs and False.

    The selection looks only at other processes' CPU use, never at the step times, and treats both
    sides of every pair alike.
    """
    return quiet_or_all(pairs, lambda pair: pair.quiet, minimum)


@dataclass(frozen=True)
class Interval:
    """The median pair ratio and its confidence interval, from ``rounds`` rounds and ``pairs`` pairs."""

    median: float
    low: float
    high: float
    rounds: int
    pairs: int
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        """The larger distance from the median to an end of the interval, relative to the median."""
        return max(self.high / self.median - 1, 1 - self.low / self.median)


def median_interval(
    rounds: Sequence[Sequence[float]],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """The median of the pooled ``rounds`` of ratios, with its two-stage bootstrap interval (see above).

    Computed on logarithms, so that ``a / b`` and ``b / a`` give reciprocal results.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    logs = [[math.log(r) for r in ratios] for ratios in rounds if ratios]
    if not logs:
        raise ValueError("no pairs to compute an interval from.")
    if any(not math.isfinite(v) for values in logs for v in values):
        raise ValueError("pair ratios must be positive and finite.")
    rng = random.Random(seed)
    medians = []
    for _ in range(resamples):
        drawn = [logs[rng.randrange(len(logs))] for _ in logs]
        medians.append(statistics.median([values[rng.randrange(len(values))] for values in drawn for _ in values]))
    tail = (1 - confidence) / 2
    return Interval(
        median=math.exp(statistics.median([v for values in logs for v in values])),
        low=math.exp(quantile(medians, tail)),
        high=math.exp(quantile(medians, 1 - tail)),
        rounds=len(logs),
        pairs=sum(len(values) for values in logs),
        confidence=confidence,
    )


def judge(low: float, high: float, goal: float, direction: Direction) -> Verdict:
    """Pass when the whole interval meets the goal, miss when the whole interval misses it."""
    if low > high:
        raise ValueError(f"an interval's low end must not exceed its high end, got [{low}, {high}].")
    meets_worst, meets_best = (high <= goal, low <= goal) if direction == "<=" else (low >= goal, high >= goal)
    if meets_worst:
        return "pass"
    return "inconclusive" if meets_best else "miss"


@dataclass(frozen=True)
class Comparison:
    """Phase ``phase`` of run ``a`` against phase ``b_phase`` of run ``b``, paired step by step (or epoch by
    epoch). ``goal`` is the target on the median ratio ``a / b`` (``None``: reported, not judged)."""

    target: str
    a: str
    b: str
    phase: str
    b_phase: str
    goal: float | None
    direction: Direction = "<="

    @property
    def key(self) -> str:
        return f"{self.a}/{self.phase} vs {self.b}/{self.b_phase}"


@dataclass
class PairedComparison:
    """A comparison and its measurements, round by round, judged by ``clock`` with quiet pairs as
    defined by ``threshold`` (see :func:`pair_up`)."""

    comparison: Comparison
    clock: Clock = "wall"
    threshold: float = 1.0
    rounds: list[tuple[list[Sample], list[Sample]]] = field(default_factory=list)
    _intervals: dict[tuple[Clock, int], Interval] = field(default_factory=dict, repr=False, compare=False)

    def add_round(self, a: Sequence[Sample], b: Sequence[Sample]) -> None:
        if len(a) != len(b):
            raise ValueError(f"paired runs must have as many steps each, got {len(a)} and {len(b)}.")
        self.rounds.append((list(a), list(b)))

    def used(self, clock: Clock | None = None) -> list[tuple[list[Pair], bool]]:
        """Per round, the pairs the statistics use and whether they are the quiet ones (see :func:`usable`)."""
        return [usable(pair_up(a, b, self.threshold, clock or self.clock)) for a, b in self.rounds]

    def interval(self, clock: Clock | None = None) -> Interval:
        key = (clock or self.clock, len(self.rounds))  # rounds are only ever added
        if key not in self._intervals:
            self._intervals[key] = median_interval([[p.ratio for p in pairs] for pairs, _ in self.used(key[0])])
        return self._intervals[key]

    def verdict(self) -> Verdict | None:
        """The verdict on the goal by the judged clock, or None for a comparison without one."""
        goal = self.comparison.goal
        if goal is None:
            return None
        interval = self.interval()
        return judge(interval.low, interval.high, goal, self.comparison.direction)

    @property
    def decided(self) -> bool:
        """Judged pass or miss, or not judged at all: more rounds would not change what is reported."""
        return self.verdict() in (None, "pass", "miss")
