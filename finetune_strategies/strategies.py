"""The built-in strategies. Each is a schedule on :class:`~finetune_strategies.base.FinetuningStrategy`.

| name                  | frozen at start | unfrozen                                              |
|-----------------------|-----------------|-------------------------------------------------------|
| `no_freeze`           | nothing         | -                                                     |
| `freeze`              | backbone        | never                                                 |
| `freeze_unfreeze`     | backbone        | all of it at `unfreeze_epoch`                         |
| `unfreeze_milestones` | backbone        | last `num_layers` layers at `e1`, the rest at `e2`     |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from typing_extensions import Unpack

from finetune_strategies.base import FinetuningStrategy, Phase, StrategyOptions
from finetune_strategies.errors import ScheduleError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.layers import LAYER_UNITS, LayerUnit, list_layers
from finetune_strategies.validation import check_epoch, check_positive_int


class NoFreeze(FinetuningStrategy):
    """Train everything from the first epoch."""

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze nothing."""


class Freeze(FinetuningStrategy):
    """Keep the backbone frozen for the whole run."""


class FreezeUnfreeze(FinetuningStrategy):
    """Freeze the backbone, then unfreeze all of it at ``unfreeze_epoch`` (counted from 0)."""

    metadata_example = '("freeze_unfreeze", 7)'

    def __init__(self, unfreeze_epoch: int = 10, **options: Unpack[StrategyOptions]) -> None:
        super().__init__(**options)
        self.unfreeze_epoch = check_epoch("unfreeze_epoch", unfreeze_epoch)

    @classmethod
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"unfreeze_epoch": metadata}

    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        modules = tuple(m for _, m in self.find_modules_to_freeze(pl_module))
        return [Phase(self.unfreeze_epoch, "backbone", modules)]


class UnfreezeMilestones(FinetuningStrategy):
    """Freeze the backbone; unfreeze its last ``num_layers`` layers at ``milestones[0]`` and the rest
    at ``milestones[1]``. What a layer is depends on ``layer_unit`` (see :mod:`finetune_strategies.layers`).
    """

    metadata_example = '("unfreeze_milestones", ((3, 8), 2))'

    def __init__(
        self,
        milestones: Sequence[int] = (5, 10),
        num_layers: int = 5,
        *,
        layer_unit: LayerUnit = "param_modules",
        **options: Unpack[StrategyOptions],
    ) -> None:
        super().__init__(**options)
        if not isinstance(milestones, (tuple, list)) or len(milestones) != 2:
            raise StrategySpecTypeError(f"`milestones` must be two epochs (e1, e2), e.g. (3, 8), got {milestones!r}.")
        first, second = (check_epoch(f"milestones[{i}]", e) for i, e in enumerate(milestones))
        if first >= second:
            raise StrategySpecError(f"milestones must satisfy e1 < e2, got ({first}, {second}).")
        self.milestones = (first, second)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if layer_unit not in LAYER_UNITS:
            raise StrategySpecError(f"`layer_unit` must be one of {list(LAYER_UNITS)}, got {layer_unit!r}.")
        self.layer_unit: LayerUnit = layer_unit

    @classmethod
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        if not isinstance(metadata, (tuple, list)) or len(metadata) != 2 or not isinstance(metadata[0], (tuple, list)):
            raise StrategySpecTypeError(
                f"unfreeze_milestones takes ((e1, e2), num_layers), e.g. {cls.metadata_example}, got {metadata!r}."
            )
        return {"milestones": tuple(metadata[0]), "num_layers": metadata[1]}

    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        layers = list_layers(self.find_modules_to_freeze(pl_module), self.layer_unit)
        if self.num_layers > len(layers):
            raise ScheduleError(
                f"unfreeze_milestones asks for the last {self.num_layers} layers, but the backbone has "
                f"only {len(layers)} layers counted as {self.layer_unit!r}."
            )
        split = len(layers) - self.num_layers
        last, rest = layers[split:], layers[:split]
        return [
            Phase(self.milestones[0], ", ".join(x.name for x in last), sum((x.modules for x in last), ())),
            Phase(self.milestones[1], "rest of backbone", sum((x.modules for x in rest), ())),
        ]
