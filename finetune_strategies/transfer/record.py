"""The record of finished stages, ``transfer_state.json`` in the output folder, used to resume.

A stage counts as finished when its record is there, its fingerprint equals the planned stage's
(same settings for it and every stage before it, same pretrained weights) and its checkpoint file
exists. A rerun skips the longest run of finished stages from the start and goes on from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune_strategies.checkpointing.checkpoint_io import atomic_write
from finetune_strategies.transfer.stages import StagePlan

STATE_FILE = "transfer_state.json"
_FORMAT = 1


@dataclass(frozen=True)
class StageResult:
    """What a stage did: what it froze, how many parameters trained, where its checkpoint is."""

    index: int
    name: str
    frozen: tuple[str, ...]
    trainable_params: int
    frozen_params: int
    checkpoint: str
    fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False
    """True when this run found the stage finished by an earlier run and did not redo it."""

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.frozen_params

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frozen"] = list(self.frozen)
        del data["reused"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(**{**data, "frozen": tuple(data["frozen"]), "reused": True})


class Progress:
    """Reads and writes the finished-stage records of one output folder."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / STATE_FILE
        self.records: list[StageResult] = []
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("format") == _FORMAT:
                self.records = [
                    StageResult.from_dict({**r, "checkpoint": str(output_dir / r["checkpoint"])})
                    for r in data.get("stages", [])
                ]

    def finished(self, plans: list[StagePlan]) -> list[StageResult]:
        """The records of the leading stages of ``plans`` that a rerun need not redo."""
        done: list[StageResult] = []
        for plan, record in zip(plans, self.records, strict=False):
            same = record.index == plan.index and record.name == plan.name and record.fingerprint == plan.fingerprint
            if not same or not Path(record.checkpoint).is_file():
                break
            done.append(record)
        return done

    def reset(self, keep: list[StageResult]) -> None:
        """Keep only ``keep`` (the stages being reused), dropping records of stages to be redone."""
        self.records = list(keep)
        self._write()

    def add(self, result: StageResult) -> None:
        self.records.append(result)
        self._write()

    def _write(self) -> None:
        folder = self.path.parent
        stages = [{**r.to_dict(), "checkpoint": os.path.relpath(r.checkpoint, folder)} for r in self.records]
        data = {"format": _FORMAT, "stages": stages}
        with atomic_write(self.path) as handle:  # a crash leaves the previous record whole
            handle.write(json.dumps(data, indent=2).encode())
