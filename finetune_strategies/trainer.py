"""A Lightning ``Trainer`` with Flash's ``finetune`` method."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.checkpointing.checkpoint_io import use_safe_checkpoint_io
from finetune_strategies.core.resume import guard_resume
from finetune_strategies.errors import ConfigurationError
from finetune_strategies.strategies.finetuner import Finetuner
from finetune_strategies.strategies.plan import SchedulePlan, describe_schedule
from finetune_strategies.strategies.registry import StrategySpec


class Trainer(pl.Trainer):
    """``lightning.pytorch.Trainer`` plus :meth:`finetune` and :meth:`explain`, with crash-safe, pickle-safe
    checkpoint files.

    It takes every argument of Lightning's ``Trainer``; a :class:`~finetune_strategies.Finetuner` in
    ``callbacks`` stands for its ``.callback``. Unless ``plugins`` has a checkpoint IO, it
    writes and reads checkpoints with :class:`~finetune_strategies.checkpointing.checkpoint_io.SafeCheckpointIO`:
    atomic writes, and ``weights_only=True`` loads on every supported Lightning and torch version.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        callbacks = kwargs.get("callbacks")
        if isinstance(callbacks, Finetuner):
            kwargs["callbacks"] = callbacks.callback
        elif isinstance(callbacks, (list, tuple)):  # Finetuner(...) where a callback goes: its callback
            kwargs["callbacks"] = [c.callback if isinstance(c, Finetuner) else c for c in callbacks]
        super().__init__(*args, **kwargs)
        use_safe_checkpoint_io(self, kwargs.get("plugins"))

    def finetune(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | Any | None = None,
        strategy: StrategySpec = "no_freeze",
        train_bn: bool | None = None,
        *,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
        **strategy_options: Any,
    ) -> None:
        """Fit ``model`` with the fine-tuning ``strategy`` (any spec :func:`resolve_strategy` takes).

        A fine-tuning callback already on the trainer is replaced, with a warning: two strategies
        never run at once. The strategy's callback runs before the other callbacks (after Lightning's
        tuner callbacks), so that they see each epoch's unfreeze; checkpoint callbacks stay last.
        ``datamodule`` may also be a train dataloader, as in ``Trainer.fit``. ``ckpt_path`` and
        ``weights_only`` are those of :meth:`fit`.
        """
        if datamodule is not None and not isinstance(datamodule, pl.LightningDataModule):
            if train_dataloaders is not None:
                raise TypeError("Pass dataloaders either positionally or as train_dataloaders=, not both.")
            datamodule, train_dataloaders = None, datamodule
        callback = Finetuner(strategy, train_bn=train_bn, **strategy_options).callback
        self._use_finetuning_callback(callback)
        self.fit(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            ckpt_path=ckpt_path,
            weights_only=weights_only,
        )

    def explain(
        self,
        model: pl.LightningModule,
        strategy: StrategySpec = "no_freeze",
        *,
        steps_per_epoch: int = 1,
        **strategy_options: Any,
    ) -> SchedulePlan:
        """Show what trains, epoch by epoch, for this trainer's ``max_epochs``, without training.

        The plan of ``strategy`` on ``model`` as :func:`~finetune_strategies.strategies.plan.describe_schedule` makes
        it: by the strategy's own code, with the model's own optimizer and LR schedulers.
        ``steps_per_epoch`` is how often step-interval schedulers step in an epoch.
        """
        if self.max_epochs is None or self.max_epochs < 1:
            raise ConfigurationError(
                f"explain plans the trainer's max_epochs epochs, and it is {self.max_epochs}: create the Trainer "
                "with max_epochs=N (on the command line: --trainer.max_epochs N)."
            )
        return describe_schedule(
            model, strategy, max_epochs=self.max_epochs, steps_per_epoch=steps_per_epoch, **strategy_options
        )

    @override
    def fit(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """``lightning.pytorch.Trainer.fit``, but a ``ckpt_path`` (``"last"`` included) that is truncated
        or corrupt, cannot resume training, or was written by another strategy or schedule raises an
        error naming the file (see :mod:`finetune_strategies.core.resume`) instead of loading.

        ``ckpt_path`` loads with ``weights_only=True`` unless ``weights_only=False`` is given, with every
        supported torch (before 2.6 ``torch.load`` unpickles in full by default): a checkpoint that
        holds other objects raises an error naming them (see :mod:`finetune_strategies.checkpointing.checkpoint_io`).
        """
        guard_resume(self)
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    @override
    def validate(self, *args: Any, **kwargs: Any) -> Any:
        """``lightning.pytorch.Trainer.validate``; a ``ckpt_path`` that keeps only what trained is completed
        from the model's own frozen weights, on a fresh trainer too, and a damaged one raises an error
        naming the file (see :mod:`finetune_strategies.core.resume`)."""
        guard_resume(self)
        return super().validate(*args, **kwargs)

    @override
    def test(self, *args: Any, **kwargs: Any) -> Any:
        """``lightning.pytorch.Trainer.test``, with the checks and completion of :meth:`validate`."""
        guard_resume(self)
        return super().test(*args, **kwargs)

    @override
    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """``lightning.pytorch.Trainer.predict``, with the checks and completion of :meth:`validate`."""
        guard_resume(self)
        return super().predict(*args, **kwargs)

    def _use_finetuning_callback(self, callback: BaseFinetuning) -> None:
        current = cast(list[pl.Callback], self.callbacks)  # type: ignore[has-type]
        replaced = [c for c in current if isinstance(c, BaseFinetuning) and c is not callback]
        if replaced:
            rank_zero_warn(
                f"Replacing fine-tuning callback(s) {[type(c).__name__ for c in replaced]} with "
                f"{type(callback).__name__}: only one strategy runs at a time."
            )
        # First, as Flash did, so that other callbacks see each epoch's unfreeze; Lightning's own order
        # still puts tuner callbacks before it and checkpoint callbacks last.
        others = [c for c in current if not isinstance(c, BaseFinetuning)]
        self.callbacks = _lightning.reorder_callbacks([callback, *others])
