"""Optimizer and LR-scheduler specs: one language for ``ImageClassifier``, transfer-learning configs and
fine-tuning schedules.

A spec names a class, as a name, a dotted class path, a class, or a mapping as LightningCLI writes it::

    "adamw"                                      # a torch.optim class, case-insensitive
    "torch.optim.AdamW" / torch.optim.AdamW      # a dotted path or the class itself
    {"class_path": "AdamW", "init_args": {"lr": 1e-3}}
    {"class_path": "cosine", "init_args": {"T_max": 10}, "interval": "epoch", "frequency": 1, "monitor": "val_loss"}

A scheduler name is any ``torch.optim.lr_scheduler`` class, case-insensitive, or one of the aliases
below. ``interval``, ``frequency`` and ``monitor`` go to Lightning, the ``init_args`` to the class;
they are checked against its signature when the spec is parsed, without a trainer.

When the scheduler is built, arguments that the spec leaves out take these defaults:

| alias         | scheduler          | default when missing                                      |
|---------------|--------------------|-----------------------------------------------------------|
| `cosine`      | CosineAnnealingLR  | `T_max` = the trainer's `max_epochs`                      |
| `step`        | StepLR             | `step_size` = `max(1, max_epochs // 3)`                   |
| `exponential` | ExponentialLR      | `gamma=0.9`                                               |
| `linear`      | LinearLR           | torch's defaults                                          |
| `plateau`     | ReduceLROnPlateau  | `monitor` = the parser's `default_monitor`                |
| `onecycle`    | OneCycleLR         | `max_lr` = the optimizer's lr, `total_steps` = the trainer's estimated steps |

OneCycleLR steps every batch and other schedulers every epoch unless the spec gives ``interval``.

Names read from a file that the user did not write as code (a checkpoint's hyperparameters) are parsed
inside :func:`names_from_file`: there a dotted class path resolves only in a module that is already
imported, so a checkpoint can name ``torch.optim.AdamW`` but never make the library import a module
(``"this.Adam"`` would run ``this``'s code). Names and config files the user passes are unrestricted.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer, lr_scheduler

from finetune_strategies.errors import StrategySpecError
from finetune_strategies.validation import (
    ErrorClass,
    check_known_keys,
    check_mapping,
    check_positive_int,
    close_matches,
)

OPTIMIZER_KEYS = ("class_path", "init_args")
SCHEDULER_KEYS = ("class_path", "init_args", "interval", "frequency", "monitor")
LIGHTNING_KEYS = ("interval", "frequency", "monitor")
SCHEDULER_ALIASES = {
    "cosine": "cosineannealinglr",
    "step": "steplr",
    "exponential": "exponentiallr",
    "linear": "linearlr",
    "plateau": "reducelronplateau",
    "onecycle": "onecyclelr",
}
_EXAMPLE = "{'class_path': 'torch.optim.Adam', 'init_args': {'lr': 0.001}}"


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer class and its keyword arguments (everything but the parameters)."""

    cls: type[Optimizer]
    init_args: dict[str, Any] = field(default_factory=dict)
    error: ErrorClass = field(default=StrategySpecError, compare=False, repr=False)

    def build(self, params: Iterable[torch.nn.Parameter]) -> Optimizer:
        """The optimizer over ``params``."""
        try:
            return self.cls(list(params), **self.init_args)
        except (TypeError, ValueError) as cause:
            raise self.error(f"Cannot build optimizer {self.cls.__name__} with {self.init_args!r}: {cause}") from cause


@dataclass(frozen=True)
class SchedulerSpec:
    """An LR-scheduler class, its keyword arguments (everything but the optimizer) and how Lightning
    steps it. ``interval=None`` steps OneCycleLR every batch and other schedulers every epoch."""

    cls: type[Any]
    init_args: dict[str, Any] = field(default_factory=dict)
    interval: str | None = None
    frequency: int = 1
    monitor: str | None = None
    error: ErrorClass = field(default=StrategySpecError, compare=False, repr=False)

    def _max_epochs(self, trainer: pl.Trainer | None, argument: str, epochs: int | None = None) -> int:
        if epochs is None:
            epochs = trainer.max_epochs if trainer is not None else None
        if epochs is None or epochs < 1:
            raise self.error(
                f"{self.cls.__name__} takes its {argument} from the trainer's max_epochs, which is not set; "
                f"give {argument} in its arguments."
            )
        return int(epochs)

    def arguments(
        self,
        optimizer: Optimizer,
        trainer: pl.Trainer | None = None,
        *,
        epochs: int | None = None,
        total_steps: int | None = None,
    ) -> dict[str, Any]:
        """``init_args`` with the defaults of the module docstring for what they leave out. ``epochs`` and
        ``total_steps`` replace the trainer's ``max_epochs`` and stepping batches (a scheduler that
        starts mid-run spans what is left of it)."""
        args = dict(self.init_args)
        if self.cls is lr_scheduler.CosineAnnealingLR and "T_max" not in args:
            args["T_max"] = self._max_epochs(trainer, "T_max", epochs)
        elif self.cls is lr_scheduler.StepLR and "step_size" not in args:
            args["step_size"] = max(1, self._max_epochs(trainer, "step_size", epochs) // 3)
        elif self.cls is lr_scheduler.ExponentialLR:
            args.setdefault("gamma", 0.9)
        elif self.cls is lr_scheduler.OneCycleLR:
            if "max_lr" not in args and "lr" in optimizer.defaults:
                args["max_lr"] = optimizer.defaults["lr"]
            if "total_steps" not in args and "epochs" not in args:
                if total_steps is None and trainer is None:
                    raise self.error("OneCycleLR needs total_steps, or a trainer to take it from.")
                args["total_steps"] = total_steps or int(trainer.estimated_stepping_batches)  # type: ignore[union-attr]
        return args

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, in the mapping form it can be parsed from."""
        data: dict[str, Any] = {"class_path": f"{self.cls.__module__}.{self.cls.__qualname__}"}
        if self.init_args:
            data["init_args"] = dict(self.init_args)
        for key in ("interval", "monitor"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.frequency != 1:
            data["frequency"] = self.frequency
        return data

    def build(
        self,
        optimizer: Optimizer,
        trainer: pl.Trainer | None = None,
        *,
        epochs: int | None = None,
        total_steps: int | None = None,
    ) -> dict[str, Any]:
        """The scheduler over ``optimizer`` as a Lightning ``lr_scheduler`` config dict; ``trainer`` (or
        ``epochs`` / ``total_steps``) gives the defaults that depend on the run's length."""
        args = self.arguments(optimizer, trainer, epochs=epochs, total_steps=total_steps)
        try:
            scheduler = self.cls(optimizer, **args)
        except (TypeError, ValueError) as cause:
            raise self.error(f"Cannot build scheduler {self.cls.__name__} with {args!r}: {cause}") from cause
        interval = self.interval or ("step" if self.cls is lr_scheduler.OneCycleLR else "epoch")
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval, "frequency": self.frequency}
        if self.monitor is not None:
            config["monitor"] = self.monitor
        return config


def _classes(module: Any, base: type) -> dict[str, type]:
    found = {}
    for name, value in vars(module).items():
        if not name.startswith("_") and value is not base and inspect.isclass(value) and issubclass(value, base):
            found[name.lower()] = value
    return found


def _by_name(kind: str, name: str, where: str, error: ErrorClass) -> type:
    if kind == "optimizer":
        table, aliases = _classes(torch.optim, Optimizer), {}
    else:
        table = _classes(lr_scheduler, lr_scheduler.LRScheduler)
        table["reducelronplateau"] = lr_scheduler.ReduceLROnPlateau
        aliases = SCHEDULER_ALIASES
    key = name.lower().replace("_", "")
    key = aliases.get(key, key)
    if key in table:
        return table[key]
    choices = sorted(set(aliases) | {c.__name__ for c in table.values()})
    close = close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""  # class names unquoted, as ImageClassifier wrote them
    raise error(f"{where}: Unknown {kind} {name!r}.{hint} Choose one of: {', '.join(choices)}.")


_FROM_FILE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "finetune_strategies_names_from_file", default=None
)


@contextlib.contextmanager
def names_from_file(source: str) -> Iterator[None]:
    """Parse specs inside this block as read from ``source``, a file: no dotted path imports a module."""
    token = _FROM_FILE.set(source)
    try:
        yield
    finally:
        _FROM_FILE.reset(token)


def check_name_from_file(spec: Any, where: str, source: str, *, error: ErrorClass = StrategySpecError) -> None:
    """Raise ``error`` if ``spec`` (read from the file ``source``) is a dotted class path whose module is not
    imported: resolving it would import the module (see :func:`names_from_file`)."""
    if isinstance(spec, Mapping):
        spec = spec.get("class_path")
    if isinstance(spec, str) and "." in spec:
        with names_from_file(source):
            _check_importable(spec.rpartition(".")[0], spec, where, error)


def _check_importable(module_name: str, path: str, where: str, error: ErrorClass) -> None:
    source = _FROM_FILE.get()
    if source is not None and module_name not in sys.modules:
        raise error(
            f"{where}: {path!r} comes from {source}, and naming a class there may not import a module "
            f"({module_name!r} is not imported): a file could make any code run. Use a torch.optim or "
            "torch.optim.lr_scheduler class name (e.g. 'adamw', 'cosine'), import the module yourself before "
            "loading if you trust the file, or pass the setting again when loading."
        )


def _import_class(path: str, where: str, error: ErrorClass) -> type:
    module_name, _, name = path.rpartition(".")
    _check_importable(module_name, path, where, error)
    try:
        module = importlib.import_module(module_name)
    except ImportError as cause:
        raise error(f"{where}: cannot import {module_name!r} for {path!r} ({cause}).") from None
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise error(f"{where}: {module.__name__} has no class {name!r}; give a full class path or a class name.")
    return found


def _resolve_class(kind: str, spec: Any, where: str, error: ErrorClass) -> type:
    if isinstance(spec, type):
        return spec
    if not isinstance(spec, str) or not spec:
        raise error(
            f"{where} must be a class name, a dotted class path, a class or a mapping such as {_EXAMPLE}, got {spec!r}."
        )
    return _import_class(spec, where, error) if "." in spec else _by_name(kind, spec, where, error)


def _check_init_args(cls: type[Any], init_args: Any, first: str, where: str, error: ErrorClass) -> dict[str, Any]:
    if init_args is None:
        return {}
    args = check_mapping(f"{where}.init_args", init_args, example="{'lr': 0.001}", error=error)
    signature = inspect.signature(cls.__init__)
    accepted = [n for n in signature.parameters if n not in ("self", first)]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(args) - set(accepted))
    if unknown and not takes_any:
        raise error(f"{where}.init_args: {cls.__name__} does not take {unknown}. It takes: {', '.join(accepted)}.")
    return args


def _split(spec: Any, allowed: tuple[str, ...], where: str, error: ErrorClass) -> tuple[Any, dict[str, Any]]:
    """(the class part, the other keys) of a spec."""
    if not isinstance(spec, Mapping):
        return spec, {}
    check_known_keys(spec, allowed, where, error=error)
    if "class_path" not in spec:
        raise error(f"{where} needs a 'class_path', e.g. 'torch.optim.Adam'.")
    return spec["class_path"], {k: v for k, v in spec.items() if k != "class_path"}


def parse_optimizer(spec: Any, where: str, *, error: ErrorClass = StrategySpecError) -> OptimizerSpec:
    """Check an optimizer spec (see the module docstring) and import its class; ``where`` names the
    setting in messages, which raise ``error``."""
    class_part, options = _split(spec, OPTIMIZER_KEYS, where, error)
    cls = _resolve_class("optimizer", class_part, where, error)
    if not issubclass(cls, Optimizer):
        raise error(f"{where}: {cls.__name__} is not a torch.optim.Optimizer.")
    return OptimizerSpec(cls, _check_init_args(cls, options.get("init_args"), "params", where, error), error)


def parse_scheduler(
    spec: Any, where: str, *, error: ErrorClass = StrategySpecError, default_monitor: str | None = None
) -> SchedulerSpec:
    """Check an LR-scheduler spec (see the module docstring) and import its class; no trainer is needed.

    A ReduceLROnPlateau spec without ``monitor`` watches ``default_monitor``; without one either, it
    is an error.
    """
    class_part, options = _split(spec, SCHEDULER_KEYS, where, error)
    cls = _resolve_class("scheduler", class_part, where, error)
    if not issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)):
        raise error(f"{where}: {cls.__name__} is not a torch LR scheduler.")
    interval = options.get("interval")
    if interval not in (None, "epoch", "step"):
        raise error(f"{where}.interval must be 'epoch' or 'step', got {interval!r}.")
    frequency = check_positive_int(f"{where}.frequency", options.get("frequency", 1), error=error)
    monitor = options.get("monitor")
    if monitor is not None and not isinstance(monitor, str):
        raise error(f"{where}.monitor must be a logged metric name, got {monitor!r}.")
    if issubclass(cls, lr_scheduler.ReduceLROnPlateau):
        monitor = monitor or default_monitor
        if monitor is None:
            raise error(f"{where}: ReduceLROnPlateau needs 'monitor', the metric it watches.")
    init_args = _check_init_args(cls, options.get("init_args"), "optimizer", where, error)
    return SchedulerSpec(cls, init_args, interval, frequency, monitor, error)
