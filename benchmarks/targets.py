"""The issue's targets, judged on the measurements as ratios with their noise."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from benchmarks.cache_bench import CacheResult
from benchmarks.measure import Summary
from benchmarks.records import PhaseRecord, VariantRecord

Verdict = Literal["pass", "within noise", "miss", "inconclusive (busy)"]


@dataclass(frozen=True)
class Target:
    """One target row: ``value`` compared with ``goal`` (``<=`` or ``>=``).

    ``noise`` is two standard errors of a timing ratio, relative (0.03 = 3%), from the IQRs of the
    two medians. With a noise band, the verdict is "pass" only when the whole band meets the goal,
    "miss" only when the whole band misses it, and "within noise" when the band straddles it.
    ``busy`` marks a timing that could not be judged: too few of its samples were free of other
    processes' load (see :func:`benchmarks.records.quiet`), so it compares unlike conditions.
    """

    name: str
    measured: str
    value: float
    goal: float
    direction: Literal["<=", ">="]
    noise: float | None = None
    busy: bool = False

    @property
    def verdict(self) -> Verdict:
        if self.busy:
            return "inconclusive (busy)"
        band = self.noise or 0.0
        low, high = self.value * (1 - band), self.value * (1 + band)
        best, worst = (low, high) if self.direction == "<=" else (high, low)
        if self._meets(worst):
            return "pass"
        return "within noise" if self._meets(best) else "miss"

    def _meets(self, value: float) -> bool:
        return value <= self.goal if self.direction == "<=" else value >= self.goal

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def ratio_noise(a: Summary, b: Summary) -> float:
    """Two standard errors of ``a.median / b.median``, relative."""
    return 2 * math.hypot(a.median_se / a.median, b.median_se / b.median)


def _ratio(name: str, a: PhaseRecord, a_label: str, b: PhaseRecord, b_label: str, goal: float) -> Target:
    return Target(
        name,
        f"{a_label} / {b_label}",
        a.step.median / b.step.median,
        goal,
        "<=",
        ratio_noise(a.step, b.step),
        busy=not (a.quiet_enough and b.quiet_enough),
    )


def evaluate(records: dict[str, VariantRecord], cache: CacheResult | None) -> list[Target]:
    """Every target that the measured variants allow to judge."""
    targets: list[Target] = []
    ours = [r for r in records.values() if r.group == "ours"]
    for variant in ours:
        for phase in variant.phases:
            if phase.phase == "frozen" and phase.floor in records:
                floor = records[phase.floor].phases[0]
                targets.append(
                    _ratio(
                        "frozen-phase step <= 1.10x minimal loop",
                        phase,
                        f"{variant.label} ({variant.settings}) frozen",
                        floor,
                        f"minimal loop ({records[phase.floor].key.split('.')[1]})",
                        1.10,
                    )
                )
    if "ours.no_freeze" in records and "lightning.fit" in records:
        targets.append(
            _ratio(
                "no_freeze <= 1.02x plain Lightning fit",
                records["ours.no_freeze"].phase("full"),
                "no_freeze",
                records["lightning.fit"].phase("full"),
                "Lightning fit",
                1.02,
            )
        )
    for variant in ours:
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
    ours_bf, theirs = records.get("ours.freeze_unfreeze.train_bn"), records.get("lightning.backbone_finetuning")
    if ours_bf is not None and theirs is not None:
        for name in ("frozen", "unfrozen"):
            targets.append(
                _ratio(
                    "never slower than BackboneFinetuning (same settings)",
                    ours_bf.phase(name),
                    f"freeze_unfreeze {name}",
                    theirs.phase(name),
                    f"BackboneFinetuning {name}",
                    1.00,
                )
            )
    if cache is not None:
        targets.append(
            Target(
                "cache: frozen epochs after the first >= 20x faster",
                "uncached / cached epoch time (median of epochs >= 1)",
                cache.speedup,
                20.0,
                ">=",
                ratio_noise(
                    *(Summary.of_seconds([e.step_s for e in r.later()[0]]) for r in (cache.uncached, cache.cached))
                ),
            )
        )
        targets.append(
            Target(
                "cache: head weights equal uncached within 1e-5",
                "largest abs difference of head weights, cached vs uncached",
                cache.head_max_abs_diff,
                1e-5,
                "<=",
            )
        )
    return targets
