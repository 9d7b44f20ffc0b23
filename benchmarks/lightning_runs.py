"""Run a Lightning variant and time its steps with a pair of callbacks.

The clock starts in the first callback's ``on_train_batch_start`` and stops in the last callback's
``on_train_batch_end``, so the fine-tuning callback's own per-batch hooks are inside the window,
together with ``training_step``, backward and the optimizer step. Fetching the batch and moving it
to the device happen before the window, as in the minimal loop. The time from one batch start to
the next (``period``) is recorded too: it adds data loading and Lightning's loop bookkeeping.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.config import BenchConfig
from benchmarks.lockstep import HandOver
from benchmarks.measure import NOT_STARTED, Instruments, OptimizerState, Sample, Started
from benchmarks.records import PhaseRecord
from benchmarks.workload import Backbone, BenchModel, make_loader


def quiet_lightning() -> None:
    """Silence Lightning's banner lines and the warnings that a benchmark triggers on purpose."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # BackboneFinetuning with train_bn=True meets BatchNorm parameters already in the optimizer.
    warnings.filterwarnings("ignore", message=".*already exist within another group of this optimizer.*")
    # A session trains a strategy only for the epochs it compares, so its later phases never start.
    warnings.filterwarnings("ignore", message=".*ends training before it.*")


def make_trainer(device: torch.device, max_epochs: int, callbacks: list[Callback]) -> pl.Trainer:
    """A Trainer with everything off that is not training: no logger, checkpoints, progress bar."""
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


class StepClock:
    """Per-phase samples, optimizer state and peak memory of one Lightning fit; ``hand_over``, if given, is
    called after every step (in a lockstep ring)."""

    def __init__(
        self, phases: list[PhaseRecord], warmup: int, tools: Instruments, hand_over: HandOver | None = None
    ) -> None:
        self.phases = phases
        self.warmup = warmup
        self.tools = tools
        self.hand_over = hand_over
        self._started: Started = NOT_STARTED
        self._last: Sample | None = None  # the previous measured step of this epoch, awaiting its period

    def callbacks(self) -> tuple[Callback, Callback]:
        """The callback to put first and the one to put last."""
        return _ClockStart(self), _ClockStop(self)

    def epoch_start(self, epoch: int) -> None:
        if epoch >= len(self.phases):
            raise RuntimeError(f"epoch {epoch} has no phase; the variant defines {len(self.phases)}.")
        self.tools.memory.reset()
        self._last = None  # a period never spans two epochs

    def batch_start(self) -> None:
        started = self.tools.start()
        if self._last is not None and self.hand_over is None:  # in a ring, other runs' steps come between
            self._last.period_s = started.wall - self._started.wall
        self._started = started

    def batch_end(self, epoch: int, batch_idx: int) -> None:
        sample = self.tools.stop(self._started)
        self._last = sample if batch_idx >= self.warmup else None
        if self._last is not None:
            self.phases[epoch].samples.append(self._last)
        if self.hand_over is not None:
            self.hand_over()

    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = self.phases[trainer.current_epoch]
        record.optimizer = OptimizerState.of(trainer.optimizers[0])
        record.trainable_params = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        record.peak_bytes = self.tools.memory.peak()


class _ClockStart(Callback):
    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.epoch_start(trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.clock.batch_start()


class _ClockStop(Callback):
    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.clock.batch_end(trainer.current_epoch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.epoch_end(trainer, pl_module)


def fit_timed(
    config: BenchConfig,
    tools: Instruments,
    callback: Callback | None,
    phases: list[PhaseRecord],
    backbone: Backbone = "cnn",
    hand_over: HandOver | None = None,
) -> BenchModel:
    """Fit a fresh model for one epoch per phase, with ``callback`` (if any) between the clocks."""
    if hand_over is None:  # alone: memory is measured; in a ring it is shared, and a trim would disturb the others
        tools.memory.begin_variant()
    for record in phases:
        record.start_bytes = tools.memory.start_bytes
    model = BenchModel(config, backbone)
    loader = make_loader(config, config.steps_per_epoch, backbone=backbone)
    first, last = StepClock(phases, config.warmup, tools, hand_over).callbacks()
    callbacks = [first, last] if callback is None else [first, callback, last]
    make_trainer(tools.device, len(phases), callbacks).fit(model, train_dataloaders=loader)
    return model
