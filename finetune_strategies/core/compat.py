"""What code written for Flash's and Lightning's fine-tuning callbacks needs in order to run unchanged.

* Flash's ``finetune_function(pl_module, epoch, optimizer, opt_idx)`` takes a fourth argument.
* Lightning's ``unfreeze_and_add_param_group`` is a static method, called on the class as often as on
  an instance. Ours keeps that form. It compares parameters by identity (Lightning compares by value
  and drops distinct parameters with equal values), names the new group after what it holds, and
  warns about every parameter the optimizer already holds. Called while a strategy runs its
  ``finetune_function`` - either form, on any class - it also records the unfreeze with that
  strategy, so that a resumed run makes the modules trainable again and their BatchNorm layers leave
  eval mode. The strategy teaches every LR scheduler about the new group once ``finetune_function``
  returns.
* Flash's ``unfreeze_and_extend_param_group`` appended to group 0, which breaks resume; here it adds a
  group that keeps group 0's learning rate.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import lightning.pytorch as pl
from torch import nn
from torch.optim import Optimizer

from finetune_strategies.core.groups import add_named_group, not_in_optimizer, warn_already_present
from finetune_strategies.model import batchnorm

Modules = nn.Module | Iterable[Any]


class RunningStrategy(Protocol):
    """What this module needs of the strategy whose ``finetune_function`` runs (a ``FinetuningStrategy``)."""

    optimizer_index: int

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None: ...

    def thaw(self, modules: Iterable[nn.Module], train_bn: bool) -> None: ...

    def name_params(self, params: Iterable[nn.Parameter]) -> str: ...


_running: contextvars.ContextVar[RunningStrategy | None] = contextvars.ContextVar("finetune_running", default=None)


@contextlib.contextmanager
def running(strategy: RunningStrategy) -> Iterator[None]:
    """While the block runs, unfreezes through :func:`unfreeze_and_add_param_group` are ``strategy``'s."""
    token = _running.set(strategy)
    try:
        yield
    finally:
        _running.reset(token)


def call_finetune_function(
    strategy: RunningStrategy, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
) -> None:
    """Call ``strategy.finetune_function`` with Lightning's three arguments or Flash's four."""
    parameters = inspect.signature(strategy.finetune_function).parameters
    with running(strategy):
        if len(parameters) >= 4:
            strategy.finetune_function(pl_module, epoch, optimizer, strategy.optimizer_index)  # type: ignore[call-arg]
        else:
            strategy.finetune_function(pl_module, epoch, optimizer)


def unfreeze_and_add_param_group(
    modules: Modules,
    optimizer: Optimizer,
    lr: float | None = None,
    initial_denom_lr: float = 10.0,
    train_bn: bool = True,
) -> None:
    """Make ``modules`` trainable and put their parameters in a new param group.

    The group's lr is ``lr``, or group 0's current lr divided by ``initial_denom_lr``. Parameters the
    optimizer already holds (by identity) are skipped, with a warning that says what to do.
    """
    strategy = _running.get()
    flat = batchnorm.flatten(modules)
    candidates = batchnorm.own_parameters(flat, train_bn)
    frozen_before = {id(p) for p in candidates if not p.requires_grad}
    if strategy is not None:
        strategy.thaw(flat, train_bn)
    else:
        batchnorm.thaw(flat, train_bn)
    params = not_in_optimizer(optimizer, candidates)
    added = {id(p) for p in params}
    skipped = [p for p in candidates if id(p) not in added]
    if skipped:
        warn_already_present(len(skipped), sum(id(p) in frozen_before for p in skipped))
    if params:
        group_lr = float(lr) if lr is not None else optimizer.param_groups[0]["lr"] / initial_denom_lr
        name = strategy.name_params(params) if strategy is not None else None
        add_named_group(optimizer, params, group_lr, name)


def unfreeze_and_extend_param_group(modules: Modules, optimizer: Optimizer, train_bn: bool = True) -> None:
    """Flash's helper: the parameters get a new group that keeps group 0's learning rate."""
    unfreeze_and_add_param_group(modules, optimizer, initial_denom_lr=1.0, train_bn=train_bn)
