"""Stage plans: each stage of a config checked against the model and data, before anything trains.

:func:`plan_stages` resolves every stage's ``freeze_modules`` to module names, checks its data-module
settings and replay, and gives each stage a fingerprint (its settings and those of every stage
before it), which tells a rerun whether a finished stage can be reused.

:class:`StageData` gives each stage its data module. With a data-module *instance*, a stage's
``datamodule`` settings are attributes set on it (they must exist already); keys a stage does not
give go back to their base value. With a *factory* (a class or any callable returning a data
module), the data module is built anew for each stage with the merged settings as keyword arguments.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from torch import nn
from torch.utils.data import Dataset

from finetune_strategies.errors import TransferConfigError
from finetune_strategies.model.selectors import resolve_selectors
from finetune_strategies.transfer.config import StageSettings, TransferConfig
from finetune_strategies.transfer.heads import modules_outside
from finetune_strategies.transfer.replay import ReplayDataModule

DataModuleFactory = Callable[..., pl.LightningDataModule]
DataModuleSource = pl.LightningDataModule | DataModuleFactory | None
ReplaySource = Dataset[Any] | pl.LightningDataModule | None


@dataclass(frozen=True)
class StagePlan:
    """A stage ready to run: its merged settings, the module names it freezes, its fingerprint."""

    settings: StageSettings
    frozen: tuple[str, ...]
    fingerprint: str

    @property
    def index(self) -> int:
        return self.settings.index

    @property
    def name(self) -> str:
        return self.settings.name


class StageData:
    """Builds each stage's data module from a data-module instance or factory (see module docstring)."""

    def __init__(self, source: DataModuleSource, replay_data: ReplaySource = None) -> None:
        if source is not None and not isinstance(source, pl.LightningDataModule) and not callable(source):
            raise TransferConfigError(
                f"datamodule must be a LightningDataModule, a callable returning one, or None; got {source!r}."
            )
        self.source = source
        self.replay_data = replay_data
        self._originals: dict[str, Any] = {}

    def check(self, settings: StageSettings, where: str) -> None:
        """Raise if the stage's data-module settings or replay cannot be applied."""
        keys = settings.datamodule
        if self.source is None:
            if keys:
                raise TransferConfigError(f"{where}.datamodule sets {sorted(keys)}, but no datamodule was given.")
        elif isinstance(self.source, pl.LightningDataModule):
            missing = sorted(k for k in keys if not hasattr(self.source, k))
            if missing:
                raise TransferConfigError(
                    f"{where}.datamodule: {type(self.source).__name__} has no attribute(s) {missing}. "
                    "A stage sets existing attributes of a data-module instance; pass a factory to "
                    "use other arguments."
                )
            for key in keys:
                self._originals.setdefault(key, getattr(self.source, key))
        else:
            try:
                inspect.signature(self.source).bind(**keys)
            except TypeError as error:
                name = getattr(self.source, "__name__", repr(self.source))
                raise TransferConfigError(f"{where}.datamodule does not fit {name}: {error}.") from None
            except ValueError:  # no signature (some builtins): the call will tell
                pass
        if settings.replay is not None and settings.replay.fraction > 0:
            if self.replay_data is None:
                raise TransferConfigError(
                    f"{where}.replay asks for a fraction of pretraining data, but no replay data was given "
                    "(run_transfer_learning(replay_data=...) or `replay_data:` in the CLI config)."
                )
            if self.source is None:
                raise TransferConfigError(f"{where}.replay needs a datamodule to mix the pretraining data into.")

    def build(self, settings: StageSettings) -> pl.LightningDataModule | None:
        """The data module of a stage (checked before with :meth:`check`)."""
        if self.source is None:
            return None
        if isinstance(self.source, pl.LightningDataModule):
            for key, original in self._originals.items():
                setattr(self.source, key, settings.datamodule.get(key, original))
            datamodule = self.source
        else:
            datamodule = self.source(**settings.datamodule)
            if not isinstance(datamodule, pl.LightningDataModule):
                raise TransferConfigError(f"The datamodule factory returned {datamodule!r}, not a LightningDataModule.")
        replay = settings.replay
        if replay is not None and replay.fraction > 0 and self.replay_data is not None:
            return ReplayDataModule(datamodule, self.replay_data, replay.fraction, replay.seed)
        return datamodule

    def restore(self) -> None:
        """Give a data-module instance back its original attribute values."""
        if isinstance(self.source, pl.LightningDataModule):
            for key, original in self._originals.items():
                setattr(self.source, key, original)


def _fingerprint(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _frozen_names(model: nn.Module, settings: StageSettings, new_heads: list[str], where: str) -> list[str]:
    try:
        names = resolve_selectors(model, list(settings.freeze_modules))
    except TransferConfigError as error:
        raise TransferConfigError(f"{where}.freeze_modules: {error}") from None
    if settings.only_new_heads:
        names = resolve_selectors(model, names + modules_outside(model, new_heads))
    if names:
        frozen_ids = {id(p) for n in names for p in model.get_submodule(n).parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen_ids]
        if not trainable and not settings.train_bn:
            raise TransferConfigError(f"{where} freezes every parameter of the model; it would train nothing.")
    return names


def plan_stages(
    config: TransferConfig,
    model: nn.Module,
    data: StageData,
    new_heads: list[str] | None = None,
    context: Any = None,
) -> list[StagePlan]:
    """Check every stage against ``model`` and ``data`` and plan it. ``context`` (plain data about the
    weights loaded before stage 1) enters every fingerprint."""
    plans = []
    history: list[Any] = [context]
    for index in range(len(config.stages)):
        settings = config.stage(index)
        where = f"stages[{index}] ({settings.name})"
        frozen = _frozen_names(model, settings, new_heads or [], where)
        data.check(settings, where)
        history.append(settings.raw)
        plans.append(StagePlan(settings, tuple(frozen), _fingerprint(history)))
    return plans
