"""What a run measured, per variant and phase, pooled over rounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.measure import OptimizerState, Summary


@dataclass
class PhaseRecord:
    """One phase of one variant: its timings (after warm-up) and its state at the phase's end.

    ``step_s`` is the time from having the batch on the device to the optimizer step done;
    ``period_s`` is the time from one batch in hand to the next, so it adds data loading and the
    training loop's own bookkeeping.
    """

    phase: str
    floor: str | None  # key of the minimal-loop variant doing the same math, if any
    step_s: list[float] = field(default_factory=list)
    period_s: list[float] = field(default_factory=list)
    optimizer: OptimizerState | None = None
    trainable_params: int = 0
    peak_bytes: int = 0
    start_bytes: int = 0

    def merge(self, other: PhaseRecord) -> None:
        """Pool ``other``'s timings into this record; keep the larger peak and the latest state."""
        self.step_s += other.step_s
        self.period_s += other.period_s
        self.optimizer = other.optimizer
        self.trainable_params = other.trainable_params
        if other.peak_bytes - other.start_bytes > self.peak_bytes - self.start_bytes:
            self.peak_bytes, self.start_bytes = other.peak_bytes, other.start_bytes

    @property
    def step(self) -> Summary:
        return Summary.of_seconds(self.step_s)

    @property
    def period(self) -> Summary | None:
        return Summary.of_seconds(self.period_s) if self.period_s else None

    def to_json(self) -> dict[str, Any]:
        period = self.period
        return {
            "phase": self.phase,
            "floor": self.floor,
            "step_ms": asdict(self.step),
            "period_ms": asdict(period) if period is not None else None,
            "step_s_raw": self.step_s,
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

    def merge(self, other: VariantRecord) -> None:
        for mine, theirs in zip(self.phases, other.phases, strict=True):
            mine.merge(theirs)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "group": self.group,
            "settings": self.settings,
            "phases": [p.to_json() for p in self.phases],
        }
