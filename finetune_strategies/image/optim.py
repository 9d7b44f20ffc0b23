"""Optimizers and LR schedulers chosen by name, so that they fit in a YAML config or a CLI flag.

An optimizer name is any ``torch.optim`` optimizer class, case-insensitive (``adam``, ``adamw``,
``sgd``, ``rmsprop``, ...). A scheduler name is one of the short aliases below or any
``torch.optim.lr_scheduler`` class name; ``scheduler_kwargs`` override the defaults.

| alias         | scheduler          | defaults                                              |
|---------------|--------------------|-------------------------------------------------------|
| `cosine`      | CosineAnnealingLR  | `T_max=max_epochs`                                    |
| `step`        | StepLR             | `step_size=max(1, max_epochs // 3)`, `gamma=0.1`      |
| `exponential` | ExponentialLR      | `gamma=0.9`                                           |
| `linear`      | LinearLR           | torch's defaults                                      |
| `plateau`     | ReduceLROnPlateau  | monitors `val_loss`                                   |
| `onecycle`    | OneCycleLR         | `max_lr=lr`, `total_steps` = the trainer's steps, stepped every batch |

Two extra keys in ``scheduler_kwargs`` go to Lightning rather than to the scheduler: ``interval``
(``"epoch"`` or ``"step"``) and ``monitor``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer, lr_scheduler

from finetune_strategies.errors import ModelConfigError

_ALIASES = {
    "cosine": "cosineannealinglr",
    "step": "steplr",
    "exponential": "exponentiallr",
    "linear": "linearlr",
    "plateau": "reducelronplateau",
    "onecycle": "onecyclelr",
}
_LIGHTNING_KEYS = ("interval", "monitor")


def _classes(module: Any, base: type) -> dict[str, type]:
    found = {}
    for name, value in vars(module).items():
        public = not name.startswith("_") and value is not base
        if public and inspect.isclass(value) and issubclass(value, base):
            found[name.lower()] = value
    return found


def _optimizers() -> dict[str, type]:
    return _classes(torch.optim, Optimizer)


def _schedulers() -> dict[str, type]:
    found = _classes(lr_scheduler, lr_scheduler.LRScheduler)
    found["reducelronplateau"] = lr_scheduler.ReduceLROnPlateau
    return found


def _lookup(kind: str, name: Any, table: dict[str, type], extra: Iterable[str] = ()) -> type:
    if not isinstance(name, str):
        raise ModelConfigError(f"`{kind}` must be a name (str), got {name!r}.")
    key = name.lower().replace("_", "")
    key = _ALIASES.get(key, key) if kind == "scheduler" else key
    if key in table:
        return table[key]
    choices = sorted(set(extra) | {c.__name__ for c in table.values()})
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelConfigError(f"Unknown {kind} {name!r}.{hint} Choose one of: {', '.join(choices)}.")


def optimizer_class(name: str) -> type:
    """The ``torch.optim`` class named ``name`` (case-insensitive)."""
    return _lookup("optimizer", name, _optimizers())


def scheduler_class(name: str) -> type:
    """The ``torch.optim.lr_scheduler`` class for ``name`` or one of the aliases."""
    return _lookup("scheduler", name, _schedulers(), extra=_ALIASES)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float, kwargs: dict[str, Any]
) -> Optimizer:
    """Instantiate the optimizer ``name`` over ``params``."""
    cls = optimizer_class(name)
    try:
        optimizer: Optimizer = cls(list(params), lr=lr, weight_decay=weight_decay, **kwargs)
    except TypeError as error:
        raise ModelConfigError(f"Cannot build optimizer {cls.__name__} with {kwargs!r}: {error}") from error
    return optimizer


def _max_epochs(trainer: pl.Trainer | None, alias: str) -> int:
    epochs = trainer.max_epochs if trainer is not None else None
    if epochs is None or epochs < 1:
        raise ModelConfigError(
            f"scheduler {alias!r} takes its length from the trainer's max_epochs, which is not set; pass "
            "it in scheduler_kwargs (e.g. T_max or step_size)."
        )
    return int(epochs)


def build_scheduler(
    optimizer: Optimizer, name: str, lr: float, kwargs: dict[str, Any], trainer: pl.Trainer | None
) -> dict[str, Any]:
    """A Lightning ``lr_scheduler`` config dict for scheduler ``name``."""
    cls = scheduler_class(name)
    options = dict(kwargs)
    config: dict[str, Any] = {"interval": "epoch"}
    if cls is lr_scheduler.CosineAnnealingLR and "T_max" not in options:
        options["T_max"] = _max_epochs(trainer, name)
    elif cls is lr_scheduler.StepLR:
        if "step_size" not in options:
            options["step_size"] = max(1, _max_epochs(trainer, name) // 3)
        options.setdefault("gamma", 0.1)
    elif cls is lr_scheduler.ExponentialLR:
        options.setdefault("gamma", 0.9)
    elif cls is lr_scheduler.ReduceLROnPlateau:
        config["monitor"] = "val_loss"
    elif cls is lr_scheduler.OneCycleLR:
        options.setdefault("max_lr", lr)
        if "total_steps" not in options and "epochs" not in options:
            if trainer is None:
                raise ModelConfigError("scheduler 'onecycle' needs a trainer or scheduler_kwargs total_steps.")
            options["total_steps"] = int(trainer.estimated_stepping_batches)
        config["interval"] = "step"
    for key in _LIGHTNING_KEYS:
        if key in options:
            config[key] = options.pop(key)
    try:
        config["scheduler"] = cls(optimizer, **options)
    except (TypeError, ValueError) as error:
        raise ModelConfigError(f"Cannot build scheduler {cls.__name__} with {options!r}: {error}") from error
    return config
