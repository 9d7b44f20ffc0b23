"""Teach learning-rate schedulers about a param group that appears after they were built.

torch schedulers keep per-group state (``base_lrs``, ``lr_lambdas``, ``min_lrs``, OneCycleLR's
``max_lr`` group keys, SWALR's ``swa_lr``, ...). A group added mid-run is unknown to them: LambdaLR,
MultiplicativeLR and CosineAnnealingWarmRestarts raise ``ValueError``, OneCycleLR and SWALR ``KeyError``.

The rule applied here: **a new group follows group 0's schedule, scaled by a fixed ratio** ``r``
(the group's lr divided by group 0's lr at the moment it is added). Every per-group learning rate
value is group 0's times ``r``; momentum values and absolute floors (``min_lrs``) are copied, and a
scheduler that cycles momentum (OneCycleLR, CyclicLR) gives the group group 0's current one. For
schedulers whose floor is 0 (the default ``eta_min`` and ``min_lr``) the new group's lr is then
``r * lr_0`` at every step.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim import Optimizer

_SCALED_LISTS = ("base_lrs", "max_lrs")
_COPIED_LISTS = ("min_lrs", "lr_lambdas", "base_momentums", "max_momentums")
_SCALED_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "swa_lr")
_COPIED_GROUP_KEYS = ("max_momentum", "base_momentum")
_CYCLED_GROUP_KEYS = ("momentum", "betas")


def _set_entry(values: list[Any], index: int, value: Any) -> None:
    if index < len(values):
        values[index] = value
    else:
        values.extend([value] * (index + 1 - len(values)))


def child_schedulers(scheduler: Any) -> list[Any]:
    """The scheduler itself, or the schedulers that SequentialLR / ChainedScheduler wrap."""
    children = getattr(scheduler, "_schedulers", None)
    if not children:
        return [scheduler]
    return [leaf for child in children for leaf in child_schedulers(child)]


def follow_group_zero(scheduler: Any, optimizer: Optimizer, index: int, ratio: float) -> None:
    """Make param group ``index`` of ``optimizer`` follow group 0's schedule times ``ratio``."""
    group, first = optimizer.param_groups[index], optimizer.param_groups[0]
    for key in _SCALED_GROUP_KEYS:
        if key in first:
            group[key] = first[key] * ratio
    for key in _COPIED_GROUP_KEYS:
        if key in first:
            group[key] = first[key]
    for leaf in child_schedulers(scheduler):
        for attr in _SCALED_LISTS:
            values = getattr(leaf, attr, None)
            if isinstance(values, list) and values:
                _set_entry(values, index, values[0] * ratio)
        for attr in _COPIED_LISTS:
            values = getattr(leaf, attr, None)
            if isinstance(values, list) and values:
                _set_entry(values, index, values[0])
        last = getattr(leaf, "_last_lr", None)
        if isinstance(last, list):
            _set_entry(last, index, group["lr"])
        if getattr(leaf, "cycle_momentum", False):  # OneCycleLR and CyclicLR set it at every step
            for key in _CYCLED_GROUP_KEYS:
                if key in first:
                    group[key] = first[key]  # the first step after the group is added uses the cycled value


def pad_to_groups(scheduler: Any, optimizer: Optimizer) -> None:
    """Give per-group lists that checkpoints do not store one entry per param group.

    ``LambdaLR`` and ``MultiplicativeLR`` leave plain functions out of their ``state_dict``, so a
    resumed scheduler has fewer ``lr_lambdas`` than the restored optimizer has groups.
    """
    count = len(optimizer.param_groups)
    for leaf in child_schedulers(scheduler):
        values = getattr(leaf, "lr_lambdas", None)
        if isinstance(values, list) and values and len(values) < count:
            _set_entry(values, count - 1, values[0])


def schedulers_of(schedulers: list[Any], optimizer: Any) -> list[Any]:
    """The schedulers that drive ``optimizer`` (or the optimizer a DeepSpeed wrapper holds)."""
    targets = (optimizer, getattr(optimizer, "optimizer", optimizer))
    return [
        scheduler
        for scheduler in schedulers
        if any(getattr(leaf, "optimizer", None) in targets for leaf in child_schedulers(scheduler))
    ]


def teach_schedulers(schedulers: list[Any], optimizer: Optimizer, index: int, fallback_ratio: float) -> None:
    """Make every scheduler of ``optimizer`` drive group ``index`` like group 0, at their current ratio.

    Group 0 can sit at lr 0 (a warm-up start); the ratio is then taken from its initial lr, and
    ``fallback_ratio`` is used when that is 0 too.
    """
    first = optimizer.param_groups[0]
    lr = optimizer.param_groups[index]["lr"]
    reference = first["lr"] if first["lr"] > 0 else first.get("initial_lr", 0.0)
    ratio = lr / reference if reference > 0 else fallback_ratio
    for scheduler in schedulers_of(schedulers, optimizer):
        follow_group_zero(scheduler, optimizer, index, ratio)


def remaining_run(
    trainer: pl.Trainer | None, epoch: int, planned: tuple[int, int] | None
) -> tuple[int | None, int | None]:
    """``(epochs, steps)`` left from ``epoch`` to the end of the run: from the trainer, else from a plan's
    ``(max_epochs, steps per epoch)``; ``(None, None)`` when unknown. On a resume the trainer does not
    know its batches yet; the scheduler's saved state replaces what is built from this then."""
    if trainer is not None and trainer.max_epochs is not None and trainer.max_epochs > 0:
        epochs = max(1, trainer.max_epochs - trainer.current_epoch)
        batches = trainer.num_training_batches
        per_epoch = int(batches) // trainer.accumulate_grad_batches if math.isfinite(batches) else 1
        return epochs, epochs * max(1, per_epoch)
    if planned is not None:
        epochs = max(1, planned[0] - epoch)
        return epochs, epochs * planned[1]
    return None, None


def replace_schedulers(configs: list[LRSchedulerConfig], optimizer: Optimizer, config: LRSchedulerConfig) -> None:
    """Make ``config`` the only scheduler of ``optimizer`` in ``configs`` (in place: the trainer's list)."""
    drives = {id(s) for s in schedulers_of([c.scheduler for c in configs], optimizer)}
    configs[:] = [c for c in configs if id(c.scheduler) not in drives] + [config]
