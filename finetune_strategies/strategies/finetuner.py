"""The :class:`Finetuner` facade: a strategy spec in, a ready callback out."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import BaseFinetuning

from finetune_strategies.strategies.registry import StrategySpec, resolve_strategy


class Finetuner:
    """Resolve a strategy spec once, eagerly, so a bad spec fails where it is written.

    Example:
        >>> from finetune_strategies import Finetuner
        >>> Finetuner(("freeze_unfreeze", 3), train_bn=False).callback.unfreeze_epoch
        3
    """

    def __init__(self, strategy: StrategySpec = "no_freeze", train_bn: bool | None = None, **options: Any) -> None:
        self.strategy = strategy
        self.callback: BaseFinetuning = resolve_strategy(strategy, train_bn=train_bn, **options)

    def resolve(self) -> BaseFinetuning:
        """The callback this facade resolved."""
        return self.callback

    def __repr__(self) -> str:
        return f"Finetuner(strategy={self.strategy!r}, callback={type(self.callback).__name__})"
