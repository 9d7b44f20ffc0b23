"""``ClassifierModule``: the LightningModule base that ``ImageClassifier`` and ``TextClassifier`` share.

It builds its optimizer and LR scheduler from settings (``optimizer="adamw"``, ``lr``,
``scheduler="cosine"``, ... in the spec language of :mod:`finetune_strategies.core.optim`) over the
parameters that require grad when training starts, so that a strategy can add frozen modules as new
param groups when it unfreezes them; logs loss and accuracy per stage; and reads checkpoints that keep
only trained weights (:mod:`finetune_strategies.checkpointing.trainable_only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.checkpointing.trainable_only import complete_checkpoint, record_adapters
from finetune_strategies.core.optim import (
    LIGHTNING_KEYS,
    OptimizerSpec,
    SchedulerSpec,
    names_from_file,
    parse_optimizer,
    parse_scheduler,
)
from finetune_strategies.errors import ModelConfigError
from finetune_strategies.validation import check_int, check_positive_float

STAGES = ("train", "val", "test")


class ClassifierModule(pl.LightningModule):
    """Base of the task models: optimizer and scheduler settings, accuracy, trainable-only checkpoints.

    A subclass calls :meth:`set_classes` and :meth:`set_optimization` in its ``__init__`` and computes its
    loss with :meth:`classification_step`.
    """

    num_classes: int
    labels: list[str] | None

    def set_classes(self, num_classes: int | None, labels: Sequence[str] | None, what: str) -> None:
        """Check and keep the number of classes and their names; make the accuracy metrics. ``what`` names
        the argument in errors (``num_classes``, ``num_labels``)."""
        if num_classes is None:
            raise ModelConfigError(f"{type(self).__name__} needs {what} (the number of classes, >= 2).")
        self.num_classes = check_int(what, num_classes, minimum=2, error=ModelConfigError)
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(labels) != num_classes:
                raise ModelConfigError(
                    f"`labels` has {len(labels)} names but {what}={num_classes}; give one per class."
                )
        self.labels = labels
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")

    def label_names(self) -> list[str]:
        """The class names: ``labels``, or the class indices as text."""
        return self.labels if self.labels is not None else [str(i) for i in range(self.num_classes)]

    # ------------------------------------------------------------------ optimization
    def set_optimization(
        self,
        optimizer: str,
        lr: float,
        weight_decay: float,
        optimizer_kwargs: dict[str, Any] | None,
        scheduler: str | None,
        scheduler_kwargs: dict[str, Any] | None,
    ) -> None:
        """Keep the optimizer and scheduler settings, failing now on an unknown name or argument."""
        self.optimizer_name = optimizer
        self.lr = check_positive_float("lr", lr, error=ModelConfigError)
        self.weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True, error=ModelConfigError)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.scheduler_name = scheduler
        self.scheduler_kwargs = dict(scheduler_kwargs or {})
        self._optimizer_spec()
        self._scheduler_spec()

    def _optimizer_spec(self) -> OptimizerSpec:
        """The optimizer from the current settings (``lr`` may change after init, e.g. by an LR finder)."""
        init_args = {"lr": self.lr, "weight_decay": self.weight_decay, **self.optimizer_kwargs}
        spec = {"class_path": self.optimizer_name, "init_args": init_args}
        return parse_optimizer(spec, "optimizer", error=ModelConfigError)

    def _scheduler_spec(self) -> SchedulerSpec | None:
        """The LR scheduler from ``scheduler`` and ``scheduler_kwargs`` (whose Lightning keys go to Lightning)."""
        if self.scheduler_name is None:
            return None
        init_args = {k: v for k, v in self.scheduler_kwargs.items() if k not in LIGHTNING_KEYS}
        lightning = {k: v for k, v in self.scheduler_kwargs.items() if k in LIGHTNING_KEYS}
        spec = {"class_path": self.scheduler_name, "init_args": init_args, **lightning}
        return parse_scheduler(spec, "scheduler", error=ModelConfigError, default_monitor="val_loss")

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ModelConfigError("No parameter requires grad, so there is nothing to optimize.")
        optimizer = self._optimizer_spec().build(params)
        scheduler = self._scheduler_spec()
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler.build(optimizer, _lightning.attached_trainer(self))}

    # ------------------------------------------------------------------ steps
    def classification_step(self, logits: torch.Tensor, targets: torch.Tensor, stage: str) -> torch.Tensor:
        """Cross-entropy of ``logits``; logs ``<stage>_loss`` and ``<stage>_acc`` (train, val or test)."""
        loss = nn.functional.cross_entropy(logits, targets)
        metric: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        metric(logits, targets)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    # ------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the model's adapters (``lora``) in every checkpoint, weights-only ones too."""
        record_adapters(self, checkpoint)

    @classmethod
    @override
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``LightningModule.load_from_checkpoint``; the optimizer and scheduler names in the checkpoint's
        hyperparameters may not import a module (see :func:`~finetune_strategies.core.optim.names_from_file`)."""
        with names_from_file(f"the hyperparameters of checkpoint {checkpoint_path}"):
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild what a checkpoint that keeps only trained weights left out (see
        :mod:`finetune_strategies.checkpointing.trainable_only`), so that ``load_from_checkpoint`` reads it."""
        complete_checkpoint(self, checkpoint)


# ---------------------------------------------------------------------------------- targets
