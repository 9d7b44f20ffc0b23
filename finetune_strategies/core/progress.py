"""Where a run is in its schedule: which phases started, the current stage's plateau watch, and the
transitions so far. Part of the resume state.

Phases start in order. The next phase is due at an epoch when its own epoch has come, or, when the
stage before it has a plateau trigger, when that stage plateaued or ran its ``max_epochs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from finetune_strategies.core.schedule import Phase
from finetune_strategies.core.triggers import Plateau, StageWatch, Transition, decide


class ScheduleProgress:
    """The progress of one fit through ``phases`` (see the module docstring)."""

    def __init__(self, phases: Sequence[Phase] = ()) -> None:
        self.phases = list(phases)
        self.started: set[int] = set()
        self.watch = StageWatch()
        self.transitions: list[Transition] = []

    @property
    def finished(self) -> bool:
        """Whether every phase has started: the run is in its last stage."""
        return len(self.started) == len(self.phases)

    def next_phase(self) -> int | None:
        """The first phase that has not started, or None."""
        return next((i for i in range(len(self.phases)) if i not in self.started), None)

    @property
    def watched(self) -> Plateau | None:
        """The plateau trigger that ends the current stage, if any."""
        index = self.next_phase()
        return None if index is None else self.phases[index].after

    def next_due(self, epoch: int) -> tuple[int, str] | None:
        """The next phase, if it starts at ``epoch``, with the reason."""
        index = self.next_phase()
        if index is None:
            return None
        phase = self.phases[index]
        if phase.after is not None:
            if self.watch.ended is not None:
                return index, f"{phase.after.monitor} plateaued"
            if self.watch.capped(epoch, phase.after):
                return index, f"the stage ran its max_epochs={phase.after.max_epochs}"
        if phase.epoch is not None and epoch >= phase.epoch:
            return index, f"epoch {phase.epoch}"
        return None

    def best_snapshot(self, index: int) -> dict[str, torch.Tensor] | None:
        """The weights to put back before phase ``index`` starts (its stage's best), if any."""
        after = self.phases[index].after
        return self.watch.snapshot if after is not None and after.restore_best else None

    def record(self, index: int, epoch: int, reason: str, owner: str) -> Transition:
        """Phase ``index`` started at ``epoch``: log why, and watch the new stage from there."""
        watch = self.watch
        transition = Transition(epoch, index, self.phases[index].label, reason, watch.best, watch.best_epoch)
        self.transitions.append(transition)
        rank_zero_info(f"{owner}: {transition}")
        self.watch = StageWatch(start_epoch=epoch)
        return transition

    def observe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take a validation run into account (rank 0 decides for every rank)."""
        plateau = self.watched
        if plateau is not None and self.watch.ended is None:
            decision = decide(trainer, plateau, self.watch.best)
            self.watch.observe(decision.improved, decision.value, trainer.current_epoch, plateau, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "started_phases": sorted(self.started),
            "stage": self.watch.state_dict(),
            "transitions": [vars(t) for t in self.transitions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started = {int(i) for i in state.get("started_phases", [])}
        self.watch = StageWatch.from_state_dict(state.get("stage") or {})
        self.transitions = [Transition(**t) for t in state.get("transitions", [])]
