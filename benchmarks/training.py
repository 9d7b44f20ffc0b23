"""Training a variant and timing it: the minimal PyTorch loop, Lightning fits bracketed by two clock callbacks,
and a variant's run alone or as one of a lockstep ring.

A step's window runs from the batch on the device to the optimizer step done. In a Lightning fit it opens in
the first callback's ``on_train_batch_start`` and closes in the last callback's ``on_train_batch_end``, so
the fine-tuning callback's per-batch hooks are inside it, with ``training_step``, backward and the step.
Data loading is outside the window in every variant alike. ``hand_over``, where given, is a lockstep
ring's (:mod:`benchmarks.lockstep`): it is called after every step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.config import BenchConfig
from benchmarks.measure import NOT_STARTED, Instruments, OptimizerState, Sample, Started
from benchmarks.results import PhaseRecord, VariantRecord
from benchmarks.stats import Log
from benchmarks.variants import MinimalMode, Variant
from benchmarks.workload import Backbone, BenchModel, make_loader, make_optimizer

if TYPE_CHECKING:  # benchmarks.lockstep runs variants through this module
    from benchmarks.lockstep import HandOver


def quiet_lightning() -> None:
    """Silence Lightning's banner lines and the warnings that a benchmark triggers on purpose."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    for message in (
        "does not have many workers",
        "GPU available but not used",
        "is smaller than the logging interval",
        "LeafSpec",
        # BackboneFinetuning with train_bn=True meets BatchNorm parameters already in the optimizer.
        "already exist within another group of this optimizer",
        # A session trains a strategy only for the epochs it compares, so its later phases never start.
        "ends training before it",
    ):
        warnings.filterwarnings("ignore", message=f".*{message}.*")


def trainer_options(device: torch.device, max_epochs: int, callbacks: list[Callback], **options: Any) -> dict[str, Any]:
    """The arguments of every benchmark Trainer: everything off that is not training (logger, checkpoints,
    progress bar, summary, sanity check), then ``options``."""
    return {
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "callbacks": callbacks,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **options,
    }


class FitClock:
    """A clock driven by two callbacks (:meth:`callbacks`): the first of the fit calls the ``*_start`` methods,
    the last calls the ``*_end`` methods, so every other callback's hooks run inside the window."""

    def callbacks(self) -> tuple[Callback, Callback]:
        """The callback to put first and the one to put last."""
        return _FirstCallback(self), _LastCallback(self)

    def epoch_start(self, epoch: int) -> None:
        pass

    def batch_start(self) -> None:
        pass

    def batch_end(self, epoch: int, batch_idx: int) -> None:
        pass

    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass


class _FirstCallback(Callback):
    def __init__(self, clock: FitClock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.epoch_start(trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.clock.batch_start()


class _LastCallback(Callback):
    def __init__(self, clock: FitClock) -> None:
        self.clock = clock

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.clock.batch_end(trainer.current_epoch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.epoch_end(trainer, pl_module)


class StepClock(FitClock):
    """Per-phase (per-epoch) samples after ``warmup`` steps, and each phase's optimizer state, trainable
    parameters and peak memory. ``period_s`` is the time from one batch start to the next (outside a ring)."""

    def __init__(
        self, phases: list[PhaseRecord], warmup: int, tools: Instruments, hand_over: HandOver | None = None
    ) -> None:
        self.phases = phases
        self.warmup = warmup
        self.tools = tools
        self.hand_over = hand_over
        self._started: Started = NOT_STARTED
        self._last: Sample | None = None  # the previous measured step of this epoch, awaiting its period

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


def fit_timed(
    config: BenchConfig,
    tools: Instruments,
    callbacks: Sequence[Callback],
    phases: list[PhaseRecord],
    backbone: Backbone = "cnn",
    hand_over: HandOver | None = None,
    model: BenchModel | None = None,
    shuffle: bool = False,
    **options: Any,
) -> BenchModel:
    """Fit ``model`` (by default a fresh one, built after the memory baseline) for one epoch per phase, with
    ``callbacks`` between the clocks; ``options`` go to the Trainer."""
    if hand_over is None:  # alone: memory is measured; in a ring it is shared, and a trim would disturb the others
        tools.memory.begin_variant()
    for record in phases:
        record.start_bytes = tools.memory.start_bytes
    if model is None:
        model = BenchModel(config, backbone)
    loader = make_loader(config, config.steps_per_epoch, shuffle, backbone)
    first, last = StepClock(phases, config.warmup, tools, hand_over).callbacks()
    trainer = pl.Trainer(**trainer_options(tools.device, len(phases), [first, *callbacks, last], **options))
    trainer.fit(model, train_dataloaders=loader)
    return model


def _minimal_trainable(model: BenchModel, mode: MinimalMode) -> list[nn.Parameter]:
    model.train()
    if mode == "full":
        return list(model.parameters())
    model.backbone.requires_grad_(False)
    if mode == "frozen":
        model.backbone.eval()
        return list(model.head.parameters())
    norms = [p for m in model.backbone.modules() if isinstance(m, _BatchNorm) for p in m.parameters(recurse=False)]
    for param in norms:
        param.requires_grad_(True)
    return list(model.head.parameters()) + norms


def run_minimal(
    variant: Variant, config: BenchConfig, tools: Instruments, hand_over: HandOver | None = None
) -> PhaseRecord:
    """The floor: a hand-written loop doing the math of ``variant.mode`` with no framework, for
    ``config.warmup + config.steps`` steps, each timed from the batch on the device to the step done."""
    assert variant.mode is not None
    mode, device = variant.mode, tools.device
    if hand_over is None:  # as in fit_timed
        tools.memory.begin_variant()
    model = BenchModel(config, variant.backbone).to(device)
    params = _minimal_trainable(model, mode)
    optimizer = make_optimizer(params, config.lr)
    batches = iter(make_loader(config, config.steps_per_epoch, backbone=variant.backbone))
    record = PhaseRecord(mode, variant.floors[0], config.quiet_share, start_bytes=tools.memory.start_bytes)
    clock = StepClock([record], config.warmup, tools, hand_over)  # timed as a Lightning fit's steps are
    for index in range(config.steps_per_epoch):
        x, y = (t.to(device) for t in next(batches))
        clock.batch_start()
        optimizer.zero_grad(set_to_none=True)
        if mode == "frozen":
            with torch.no_grad():
                features = model.backbone(x)
            logits = model.head(features)
        else:
            logits = model(x)
        torch.autograd.backward(nn.functional.cross_entropy(logits, y))
        optimizer.step()
        clock.batch_end(0, index)
    record.optimizer = OptimizerState.of(optimizer)
    record.trainable_params = sum(p.numel() for p in params)
    record.peak_bytes = tools.memory.peak()
    return record


def run_variant(
    variant: Variant,
    config: BenchConfig,
    tools: Instruments,
    epochs: int | None = None,
    hand_over: HandOver | None = None,
) -> VariantRecord:
    """Measure the first ``epochs`` phases of ``variant`` (all by default) once."""
    if variant.mode is not None:
        phases = [run_minimal(variant, config, tools, hand_over)]
    else:
        assert variant.callback is not None
        floors = variant.floors[:epochs]
        phases = [PhaseRecord(p, f, config.quiet_share) for p, f in zip(variant.phases, floors, strict=False)]
        callback = variant.callback()
        fit_timed(config, tools, [] if callback is None else [callback], phases, variant.backbone, hand_over)
    return VariantRecord(variant.key, variant.label, variant.group, variant.settings, phases)


def run_alone(
    variants: Sequence[Variant], config: BenchConfig, tools: Instruments, log: Log
) -> dict[str, VariantRecord]:
    """Every variant once, by itself, all its phases: memory, optimizer state and absolute step times."""
    records = {}
    for variant in variants:
        if variant.alone:
            log(f"alone: {variant.key}")
            records[variant.key] = run_variant(variant, config, tools)
    return records
