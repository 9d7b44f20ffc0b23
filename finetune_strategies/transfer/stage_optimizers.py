"""How a transfer-learning stage installs its optimizer and LR scheduler, and carries optimizer state.

A stage's specs are those of :mod:`finetune_strategies.core.optim`, as LightningCLI writes them::

    {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
    {"class_path": "StepLR", "init_args": {"step_size": 10}, "interval": "epoch", "monitor": "val_loss"}

The optimizer is built from the parameters that require grad when the stage's fit starts, that is
after the stage's modules were frozen, so it is new in every stage; the scheduler takes its missing
defaults (``T_max``, ``total_steps``, ...) from the stage's Trainer. A stage with
``reset_optimizer: false`` gives it the per-parameter state (momentum, Adam moments) that the
previous stage's optimizer left, by parameter name (:class:`OptimizerMemory`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer

from finetune_strategies import _lightning
from finetune_strategies.core.optim import OptimizerSpec, SchedulerSpec
from finetune_strategies.errors import StageError

_ParamState = dict[str, Any]


@contextlib.contextmanager
def stage_optimizers(
    model: pl.LightningModule, optimizer: OptimizerSpec | None, scheduler: SchedulerSpec | None
) -> Iterator[None]:
    """While the block runs, ``model.configure_optimizers`` builds ``optimizer`` (and ``scheduler``)
    over the parameters that require grad. With no optimizer spec the model's own method is used."""
    if optimizer is None:
        yield
        return
    stage_name = type(model).__name__

    def configure_optimizers() -> Any:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise StageError(f"No parameter of {stage_name} requires grad: the stage has nothing to train.")
        built = optimizer.build(params)
        if scheduler is None:
            return built
        return {"optimizer": built, "lr_scheduler": scheduler.build(built, _lightning.attached_trainer(model))}

    model.configure_optimizers = configure_optimizers  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.configure_optimizers  # back to the class's method


def _copy_state(state: _ParamState, device: torch.device | None = None) -> _ParamState:
    copied: _ParamState = {}
    for key, value in state.items():
        if torch.is_tensor(value):
            # scalars such as Adam's `step` stay where the optimizer keeps them
            value = (
                value.detach().clone() if device is None or value.dim() == 0 else value.detach().to(device, copy=True)
            )
        copied[key] = value
    return copied


@dataclass(frozen=True)
class OptimizerMemory:
    """The per-parameter state an optimizer left at the end of a stage, by parameter name."""

    optimizer_class: str
    state: dict[str, _ParamState]

    @classmethod
    def capture(cls, optimizer: Optimizer, names: Mapping[int, str]) -> OptimizerMemory:
        """Copy ``optimizer``'s state; ``names`` maps ``id(param)`` to the parameter's name."""
        state = {names[id(p)]: _copy_state(s) for p, s in optimizer.state.items() if id(p) in names}
        return cls(type(optimizer).__name__, state)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Mapping[str, Any], param_names: list[str], optimizer_class: str
    ) -> OptimizerMemory:
        """Rebuild the memory from a Lightning checkpoint's first optimizer state, whose parameters
        are numbered in the order of ``param_names``."""
        states = checkpoint.get("optimizer_states") or [{}]
        packed = states[0].get("state", {})
        return cls(optimizer_class, {param_names[int(i)]: _copy_state(s) for i, s in packed.items()})

    def apply(self, optimizer: Optimizer, names: Mapping[int, str]) -> int:
        """Give ``optimizer`` the remembered state of every parameter it shares with it; returns
        how many parameters got state."""
        if type(optimizer).__name__ != self.optimizer_class:
            raise StageError(
                f"reset_optimizer is false, but this stage's optimizer is a {type(optimizer).__name__} "
                f"and the previous stage's a {self.optimizer_class}: their states do not carry over."
            )
        count = 0
        for group in optimizer.param_groups:
            for param in group["params"]:
                remembered = self.state.get(names.get(id(param), ""))
                if remembered is not None:
                    optimizer.state[param] = _copy_state(remembered, param.device)
                    count += 1
        return count
