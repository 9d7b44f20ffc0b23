"""The issue's targets, judged: timing targets on the confidence interval of a paired comparison
(:mod:`benchmarks.pairing`), exact ones (bytes, weight differences) on their value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from benchmarks.cache_bench import CacheSuite
from benchmarks.pairing import Direction, PairedComparison, Verdict, judge
from benchmarks.records import VariantRecord
from benchmarks.variants import Variant


@dataclass(frozen=True)
class Target:
    """One target row: ``value`` compared with ``goal`` (``<=`` or ``>=``).

    A timing target has the interval ``[low, high]`` of a paired comparison and is judged on it (see
    :func:`benchmarks.pairing.judge`); an exact one has none and is judged on ``value``. A timing
    target of a smoke-size run is not judged (``judged=False``): its numbers mean nothing.
    """

    name: str
    measured: str
    value: float
    goal: float
    direction: Direction
    low: float | None = None
    high: float | None = None
    evidence: str = ""
    judged: bool = True

    @property
    def verdict(self) -> Verdict:
        if not self.judged:
            return "not judged (smoke size)"
        low = self.value if self.low is None else self.low
        high = self.value if self.high is None else self.high
        return judge(low, high, self.goal, self.direction)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        """The target :meth:`to_json` wrote (its verdict is judged again from the numbers)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def describe(paired: PairedComparison, variants: dict[str, Variant]) -> str:
    """``label (settings) phase / label (settings) phase`` of a comparison's two sides."""
    c = paired.comparison

    def side(key: str, phase: str) -> str:
        variant = variants.get(key)
        if variant is None or variant.group != "ours":  # a baseline's settings are those of the other side
            return f"{variant.label if variant else key} ({phase})"
        return f"{variant.label} ({variant.settings}) {phase}"

    return f"{side(c.a, c.phase)} / {side(c.b, c.b_phase)}"


def evidence(paired: PairedComparison) -> str:
    """How many pairs the interval rests on: ``40 of 48 pairs quiet, 4 rounds``."""
    used = paired.used()
    quiet = sum(len(pairs) for pairs, only_quiet in used if only_quiet)
    total = sum(len(a) for a, _ in paired.rounds)
    return f"{quiet} of {total} pairs quiet, {len(used)} rounds"


def paired_target(paired: PairedComparison, variants: dict[str, Variant], judged: bool) -> Target:
    c, interval = paired.comparison, paired.interval()
    assert c.goal is not None, "a comparison without a goal is not a target"
    return Target(
        c.target,
        describe(paired, variants),
        interval.median,
        c.goal,
        c.direction,
        interval.low,
        interval.high,
        evidence(paired),
        judged,
    )


def evaluate(
    alone: dict[str, VariantRecord],
    paired: Sequence[PairedComparison],
    cache: CacheSuite | None,
    variants: dict[str, Variant],
    judged: bool,
) -> list[Target]:
    """Every target the run allows to judge; timing targets only when ``judged`` (not at smoke size)."""
    targets = [paired_target(p, variants, judged) for p in paired if p.comparison.goal is not None]
    for variant in (r for r in alone.values() if r.group == "ours"):
        frozen_bytes = max(p.optimizer.frozen_bytes if p.optimizer else 0 for p in variant.phases)
        targets.append(
            Target(
                "zero optimizer-state bytes for frozen parameters",
                f"{variant.label} ({variant.settings}), largest over phases",
                frozen_bytes,
                0,
                "<=",
            )
        )
    if cache is not None:
        targets.append(paired_target(cache.paired[0], variants, judged))
        targets.append(
            Target(
                "cache: head weights equal uncached within 1e-5",
                "largest abs difference of head weights, cached vs uncached, over rounds",
                cache.head_max_abs_diff,
                1e-5,
                "<=",
            )
        )
    return targets
