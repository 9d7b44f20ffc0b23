"""The :class:`Finetuner` facade: a strategy spec in, a ready callback out."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from typing_extensions import override

from finetune_strategies.errors import ConfigurationError
from finetune_strategies.strategies.registry import StrategySpec, resolve_strategy


class Finetuner(Callback):
    """Resolve a strategy spec once, eagerly, so a bad spec fails where it is written.

    ``callbacks=[Finetuner(...)]`` works with the library's ``Trainer``, which puts its ``.callback`` in
    its place. A plain Lightning ``Trainer`` refuses it when the run starts, before anything trains, with
    an error that says to pass ``Finetuner(...).callback``.

    Example:
        >>> from finetune_strategies import Finetuner
        >>> Finetuner(("freeze_unfreeze", 3), train_bn=False).callback.unfreeze_epoch
        3
    """

    def __init__(self, strategy: StrategySpec = "no_freeze", train_bn: bool | None = None, **options: Any) -> None:
        self.strategy = strategy
        self.callback: BaseFinetuning = resolve_strategy(strategy, train_bn=train_bn, **options)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        raise ConfigurationError(
            f"{self!r} is among the callbacks of a plain Lightning Trainer, but it only holds the strategy's "
            "callback: pass `callbacks=[Finetuner(...).callback]`, or use finetune_strategies.Trainer, which "
            "takes Finetuner(...) in callbacks as it is (or trainer.finetune(model, data, strategy=...))."
        )

    def resolve(self) -> BaseFinetuning:
        """The callback this facade resolved."""
        return self.callback

    def __repr__(self) -> str:
        return f"Finetuner(strategy={self.strategy!r}, callback={type(self.callback).__name__})"
