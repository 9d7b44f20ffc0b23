"""What the classification tasks (``ImageClassifier``, ``TextClassifier`` and their data modules) share.

* :class:`ClassifierModule`: a LightningModule that builds its optimizer and LR scheduler from settings
  (``optimizer="adamw"``, ``lr``, ``scheduler="cosine"``, ... in the spec language of
  :mod:`finetune_strategies.core.optim`) over the parameters that require grad when training starts, so
  that a strategy can add frozen modules as new param groups when it unfreezes them; logs loss and
  accuracy per stage; and reads checkpoints that keep only trained weights
  (:mod:`finetune_strategies.checkpointing.trainable_only`).
* :func:`encode_targets`: class indices and names from int or str targets.
* :func:`stratified_hold_out`: the ``val_split`` of a data module, stratified by class.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
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
from finetune_strategies.validation import ErrorClass, check_int, check_positive_float

STAGES = ("train", "val", "test")
_SHOWN = 5


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
def listing(items: Sequence[Any], shown: int = _SHOWN) -> str:
    """The first ``shown`` items, comma-separated, and how many more there are."""
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value


def encode_targets(
    targets: dict[str, Any], labels: Sequence[str] | None, *, error: ErrorClass
) -> tuple[dict[str, list[int]], list[str]]:
    """Class indices per split and the class names, from int or str targets (``error`` is raised).

    Int targets are class indices (names are ``labels`` or ``"0"``, ``"1"``, ...); str targets are
    class names (ordered as in ``labels``, else sorted).
    """
    plain: dict[str, list[Any]] = {}
    for what, values in targets.items():
        if isinstance(values, (np.ndarray, torch.Tensor)):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise error(f"`{what}` must be a list of class indices or names, got {type(values).__name__}.")
        plain[what] = [_plain(v) for v in values]
    flat = [v for values in plain.values() for v in values]
    is_int = [isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in flat]
    is_str = [isinstance(v, str) for v in flat]
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(set(labels)) != len(labels):
            raise error(f"`labels` has duplicates: {labels}.")
    if all(is_int):
        bad = sorted({v for v in flat if v < 0 or (labels is not None and v >= len(labels))})
        if bad:
            bound = f"< {len(labels)} (the number of labels)" if labels is not None else ">= 0"
            raise error(f"Targets must be class indices {bound}; got {listing(bad)}.")
        names = labels if labels is not None else [str(i) for i in range(max(flat, default=-1) + 1)]
        return {k: [int(v) for v in values] for k, values in plain.items()}, names
    if all(is_str):
        names = labels if labels is not None else sorted(set(flat))
        unknown = sorted(set(flat) - set(names))
        if unknown:
            raise error(f"Targets {listing(unknown)} are not in `labels` {names}.")
        return {k: [names.index(v) for v in values] for k, values in plain.items()}, names
    odd = [v for v, i, s in zip(flat, is_int, is_str, strict=True) if not (i or s)]
    kinds = f"values like {listing(odd)}" if odd else "a mix of ints and strings"
    raise error(f"Targets must be all class indices (int) or all class names (str); got {kinds}.")


def stratified_hold_out(
    targets: Sequence[int], fraction: float, seed: int, *, error: ErrorClass, what: str = "samples"
) -> tuple[list[int], list[int]]:
    """Indices (train, validation) that hold out ``fraction`` of each class's samples (at least one of each
    class stays in training), shuffled with ``seed``; both sorted."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    held: list[int] = []
    for indices in by_class.values():
        rng.shuffle(indices)
        count = min(round(len(indices) * fraction), len(indices) - 1)
        held.extend(indices[:count])
    if not held:
        raise error(
            f"val_split={fraction} holds out no sample of the {len(targets)} training {what}; "
            "raise it or give validation data."
        )
    kept = set(held)
    return [i for i in range(len(targets)) if i not in kept], sorted(held)
