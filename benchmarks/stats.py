"""The statistics of a paired comparison: pair ratios, the two-stage bootstrap interval of their median, the
verdict, the stopping rule that adds rounds, and replays of recorded rounds through that rule.

A *pair* is step ``i`` of two variants run in lockstep (:mod:`benchmarks.lockstep`); a *round* is one lockstep
run of fresh models. Pairs of one round share its memory and load, so the interval resamples whole rounds,
then pairs within them (docs/benchmarks.md explains each choice).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from benchmarks.config import BenchConfig
from benchmarks.measure import Clock, Sample, quantile, quiet_or_all

Direction = Literal["<=", ">="]
Verdict = Literal["pass", "miss", "inconclusive", "not judged (smoke size)"]
Log = Callable[[str], None]

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
MIN_QUIET_PAIRS = 3
"""A round's quiet pairs are used alone when there are at least this many; else all of its pairs."""


@dataclass(frozen=True)
class Pair:
    """Step ``i`` of A and of B in one round; ``quiet`` when other processes used at most the threshold share
    of the CPU during both steps."""

    a_s: float
    b_s: float
    quiet: bool

    @property
    def ratio(self) -> float:
        return self.a_s / self.b_s


def _check_paired(a: Sequence[Sample], b: Sequence[Sample]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired runs must have as many steps each, got {len(a)} and {len(b)}.")


def pair_up(a: Sequence[Sample], b: Sequence[Sample], threshold: float, clock: Clock = "wall") -> list[Pair]:
    """Step ``i`` of ``a`` with step ``i`` of ``b`` (both from the same lockstep round), timed by ``clock``."""
    _check_paired(a, b)
    return [
        Pair(x.seconds(clock), y.seconds(clock), x.quiet(threshold) and y.quiet(threshold))
        for x, y in zip(a, b, strict=True)
    ]


def usable(pairs: Sequence[Pair], minimum: int = MIN_QUIET_PAIRS) -> tuple[list[Pair], bool]:
    """A round's quiet pairs and True when there are at least ``minimum``; else all its pairs and False.
    Looks only at other processes' CPU use, never at the step times, and treats both sides alike."""
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
    rounds: Sequence[Sequence[float]], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """The median of the pooled ``rounds`` of ratios, with its two-stage bootstrap interval, computed on
    logarithms so that ``a / b`` and ``b / a`` give reciprocal results."""
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
    """A comparison and its measurements, round by round, judged by ``clock`` with quiet pairs as defined by
    ``threshold`` (see :func:`pair_up`)."""

    comparison: Comparison
    clock: Clock = "wall"
    threshold: float = 1.0
    rounds: list[tuple[list[Sample], list[Sample]]] = field(default_factory=list)
    _intervals: dict[tuple[Clock, int], Interval] = field(default_factory=dict, repr=False, compare=False)

    def add_round(self, a: Sequence[Sample], b: Sequence[Sample]) -> None:
        _check_paired(a, b)
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


class PairedSuite(Protocol):
    """Something that measures paired comparisons one round at a time."""

    @property
    def name(self) -> str: ...

    @property
    def paired(self) -> list[PairedComparison]: ...

    def run_round(self, reverse: bool) -> None:
        """Run one more round (the ring backwards when ``reverse``) and add its pairs."""


def run_rounds(suites: Sequence[PairedSuite], config: BenchConfig, log: Log) -> dict[str, int]:
    """Rounds of every suite, interleaved (round 1 of each, then round 2 of each, ...); returns the rounds each
    suite ran.

    The stopping rule: a suite runs at least ``config.rounds`` rounds, then two more (one in each direction of
    the ring) while one of its judged comparisons is inconclusive, up to ``config.max_rounds``; no extra round
    starts ``config.budget_s`` seconds after the first round started.
    """
    started = time.perf_counter()
    done = {suite.name: 0 for suite in suites}
    for round_ in range(config.max_rounds):
        active = [s for s in suites if _wants_round(s, round_, done[s.name], config, started)]
        if not active:
            break
        for suite in active:
            log(f"round {round_ + 1}: {suite.name}")
            suite.run_round(reverse=round_ % 2 == 1)
            done[suite.name] += 1
    return done


def _wants_round(suite: PairedSuite, round_: int, ran: int, config: BenchConfig, started: float) -> bool:
    if ran < round_:  # it stopped earlier
        return False
    if round_ < config.rounds or (round_ - config.rounds) % 2 == 1:  # the second of two extra rounds always runs
        return True
    if time.perf_counter() - started > config.budget_s:
        return False
    return not all(p.decided for p in suite.paired)


REPLAYED: tuple[Verdict, ...] = ("pass", "inconclusive", "miss")


@dataclass
class _ReplaySuite:
    """One replay of a pool (a comparison with recorded rounds): each round is one of them, drawn at random."""

    pool: PairedComparison
    rng: random.Random
    paired: list[PairedComparison] = field(init=False)

    def __post_init__(self) -> None:
        self.paired = [PairedComparison(self.pool.comparison, self.pool.clock, self.pool.threshold)]

    @property
    def name(self) -> str:
        return self.pool.comparison.key

    def run_round(self, reverse: bool) -> None:
        self.paired[0].add_round(*self.rng.choice(self.pool.rounds))


@dataclass(frozen=True)
class Outcome:
    """Replays of one pool: the share ending in each verdict, the rounds a replay used on average, and the
    share of replays that ran to ``max_rounds``."""

    pool: PairedComparison
    shares: dict[Verdict, float]
    mean_rounds: float
    max_rounds_reached: float

    @property
    def agreement(self) -> float:
        """The chance that two independent runs end in the same verdict."""
        return sum(share * share for share in self.shares.values())


def replay(pool: PairedComparison, config: BenchConfig, replays: int, seed: int = 0) -> Outcome:
    """``replays`` runs made of ``pool``'s recorded rounds, drawn with replacement, through the stopping rule of
    :func:`run_rounds` and ``config``'s rounds and max_rounds (each comparison alone: in a real run another
    inconclusive comparison of its session can only add rounds)."""
    if replays < 1:
        raise ValueError(f"replays must be at least 1, got {replays}.")
    rng = random.Random(seed)
    unbounded = replace(config, budget_s=sys.maxsize)  # a replay takes no time to measure
    verdicts: list[Verdict] = []
    used: list[int] = []
    for _ in range(replays):
        suite = _ReplaySuite(pool, rng)
        used.append(run_rounds([suite], unbounded, lambda message: None)[suite.name])
        verdict = suite.paired[0].verdict()
        assert verdict is not None, "only judged comparisons are pooled"
        verdicts.append(verdict)
    shares = {v: verdicts.count(v) / replays for v in REPLAYED}
    return Outcome(pool, shares, statistics.fmean(used), used.count(config.max_rounds) / replays)
