"""What one run of a variant measured, per phase."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.measure import OptimizerState, Sample, Summary, quiet_or_all

MIN_QUIET = 5
"""Fewest quiet samples that a summary is built from; with fewer, every sample is used."""


def quiet(samples: Sequence[Sample], threshold: float, minimum: int = MIN_QUIET) -> tuple[list[Sample], bool]:
    """The samples during which other processes used at most ``threshold`` of the CPU, and True;
    or all samples and False when fewer than ``minimum`` are quiet (a busy machine)."""
    return quiet_or_all(samples, lambda sample: sample.quiet(threshold), minimum)


@dataclass
class PhaseRecord:
    """One phase of one variant: its samples (after warm-up) and its state at the phase's end."""

    phase: str
    floor: str | None  # key of the minimal-loop variant doing the same math, if any
    quiet_share: float  # a sample is quiet when other processes used at most this share of the CPU
    samples: list[Sample] = field(default_factory=list)
    optimizer: OptimizerState | None = None
    trainable_params: int = 0
    peak_bytes: int = 0
    start_bytes: int = 0

    @property
    def used(self) -> list[Sample]:
        """The samples the summaries are built from (see :func:`quiet`)."""
        return quiet(self.samples, self.quiet_share)[0]

    @property
    def step(self) -> Summary:
        return Summary.of_seconds([s.step_s for s in self.used])

    @property
    def step_all(self) -> Summary:
        return Summary.of_seconds([s.step_s for s in self.samples])

    @property
    def period(self) -> Summary | None:
        periods = [s.period_s for s in self.used if s.period_s is not None]
        return Summary.of_seconds(periods) if periods else None

    def to_json(self) -> dict[str, Any]:
        period = self.period
        used, filtered = quiet(self.samples, self.quiet_share)
        return {
            "phase": self.phase,
            "floor": self.floor,
            "step_ms": asdict(self.step),
            "step_ms_all_samples": asdict(self.step_all),
            "period_ms": asdict(period) if period is not None else None,
            "samples_used": len(used),
            "quiet_only": filtered,
            "samples": [asdict(s) for s in self.samples],
            "optimizer_state": asdict(self.optimizer) if self.optimizer is not None else None,
            "trainable_params": self.trainable_params,
            "peak_memory_bytes": self.peak_bytes,
            "memory_at_start_bytes": self.start_bytes,
        }


@dataclass
class VariantRecord:
    """A variant (a strategy, a baseline or the minimal loop) and its phases in order."""

    key: str
    label: str
    group: str
    settings: str
    phases: list[PhaseRecord]

    def phase(self, name: str) -> PhaseRecord:
        for record in self.phases:
            if record.phase == name:
                return record
        raise KeyError(f"{self.key} has no phase {name!r}; it has {[p.phase for p in self.phases]}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "group": self.group,
            "settings": self.settings,
            "phases": [p.to_json() for p in self.phases],
        }
