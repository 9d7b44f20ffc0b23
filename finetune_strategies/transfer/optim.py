"""Optimizer and LR-scheduler specs of a transfer-learning stage, and how a stage installs them.

A spec names a class and its arguments, as LightningCLI does::

    {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
    {"class_path": "StepLR", "init_args": {"step_size": 10}, "interval": "epoch", "monitor": "val_loss"}

A bare class name is looked up in ``torch.optim`` (optimizers) or ``torch.optim.lr_scheduler``
(schedulers). The optimizer is built from the parameters that require grad when the stage's fit
starts, that is after the stage's modules were frozen, so it is new in every stage. A stage with
``reset_optimizer: false`` gives it the per-parameter state (momentum, Adam moments) that the
previous stage's optimizer left, by parameter name (:class:`OptimizerMemory`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from finetune_strategies.errors import StageError, TransferConfigError

_ParamState = dict[str, Any]

OPTIMIZER_KEYS = ("class_path", "init_args")
SCHEDULER_KEYS = ("class_path", "init_args", "interval", "frequency", "monitor")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer class and its keyword arguments (everything but the parameters)."""

    cls: type[Optimizer]
    init_args: dict[str, Any] = field(default_factory=dict)

    def build(self, params: list[torch.nn.Parameter]) -> Optimizer:
        return self.cls(params, **self.init_args)


@dataclass(frozen=True)
class SchedulerSpec:
    """An LR-scheduler class, its keyword arguments (everything but the optimizer) and how Lightning
    steps it."""

    cls: type[Any]
    init_args: dict[str, Any] = field(default_factory=dict)
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None

    def build(self, optimizer: Optimizer) -> dict[str, Any]:
        """The scheduler as a Lightning ``lr_scheduler`` config dict."""
        config: dict[str, Any] = {
            "scheduler": self.cls(optimizer, **self.init_args),
            "interval": self.interval,
            "frequency": self.frequency,
        }
        if self.monitor is not None:
            config["monitor"] = self.monitor
        return config


def _import_class(path: Any, default_module: str, where: str) -> type[Any]:
    if isinstance(path, type):
        return path
    if not isinstance(path, str) or not path:
        raise TransferConfigError(f"{where}.class_path must be a class or a dotted class name, got {path!r}.")
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name or default_module)
    except ImportError as error:
        raise TransferConfigError(f"{where}.class_path {path!r}: cannot import {module_name!r} ({error}).") from None
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise TransferConfigError(
            f"{where}.class_path {path!r}: {module.__name__} has no class {name!r}. Give a full path "
            f"such as '{default_module}.{name}' or a class of {default_module}."
        )
    return found


def _check_keys(spec: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(spec, Mapping):
        raise TransferConfigError(
            f"{where} must be a mapping with keys {list(allowed)}, e.g. "
            f"{{'class_path': 'torch.optim.Adam', 'init_args': {{'lr': 0.001}}}}, got {spec!r}."
        )
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise TransferConfigError(f"{where} has unknown key(s) {unknown}; allowed keys: {list(allowed)}.")
    if "class_path" not in spec:
        raise TransferConfigError(f"{where} needs a 'class_path', e.g. 'torch.optim.Adam'.")


def _check_init_args(cls: type[Any], init_args: Any, first: str, where: str) -> dict[str, Any]:
    if init_args is None:
        return {}
    if not isinstance(init_args, Mapping) or not all(isinstance(k, str) for k in init_args):
        raise TransferConfigError(f"{where}.init_args must be a mapping of argument names, got {init_args!r}.")
    signature = inspect.signature(cls.__init__)
    accepted = [n for n in signature.parameters if n not in ("self", first)]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(init_args) - set(accepted))
    if unknown and not takes_any:
        raise TransferConfigError(
            f"{where}.init_args: {cls.__name__} does not take {unknown}. It takes: {', '.join(accepted)}."
        )
    return dict(init_args)


def parse_optimizer(spec: Mapping[str, Any], where: str) -> OptimizerSpec:
    """Check an optimizer spec and import its class; ``where`` prefixes error messages."""
    _check_keys(spec, OPTIMIZER_KEYS, where)
    cls = _import_class(spec["class_path"], "torch.optim", where)
    if not issubclass(cls, Optimizer):
        raise TransferConfigError(f"{where}.class_path {cls.__name__} is not a torch.optim.Optimizer.")
    return OptimizerSpec(cls, _check_init_args(cls, spec.get("init_args"), "params", where))


def parse_scheduler(spec: Mapping[str, Any], where: str) -> SchedulerSpec:
    """Check an LR-scheduler spec and import its class; ``where`` prefixes error messages."""
    _check_keys(spec, SCHEDULER_KEYS, where)
    cls = _import_class(spec["class_path"], "torch.optim.lr_scheduler", where)
    if not issubclass(cls, (LRScheduler, ReduceLROnPlateau)):
        raise TransferConfigError(f"{where}.class_path {cls.__name__} is not a torch LR scheduler.")
    interval = spec.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise TransferConfigError(f"{where}.interval must be 'epoch' or 'step', got {interval!r}.")
    frequency = spec.get("frequency", 1)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise TransferConfigError(f"{where}.frequency must be an int >= 1, got {frequency!r}.")
    monitor = spec.get("monitor")
    if monitor is not None and not isinstance(monitor, str):
        raise TransferConfigError(f"{where}.monitor must be a logged metric name, got {monitor!r}.")
    if issubclass(cls, ReduceLROnPlateau) and monitor is None:
        raise TransferConfigError(f"{where}: ReduceLROnPlateau needs 'monitor', the metric it watches.")
    init_args = _check_init_args(cls, spec.get("init_args"), "optimizer", where)
    return SchedulerSpec(cls, init_args, interval, frequency, monitor)


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
        return {"optimizer": built, "lr_scheduler": scheduler.build(built)}

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
