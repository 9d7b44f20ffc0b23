"""``ImageClassifier``: a ``backbone`` (timm, torchvision or any module) and a linear ``head``.

The fine-tuning strategies freeze ``backbone`` (their default ``attr_names``) and leave ``head``
trainable. The optimizer is built over the parameters that require grad when training starts, so
a strategy can add the backbone as a new param group when it unfreezes it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.checkpointing.trainable_only import complete_checkpoint, record_adapters
from finetune_strategies.core.compiled import compile_option
from finetune_strategies.core.optim import (
    LIGHTNING_KEYS,
    OptimizerSpec,
    SchedulerSpec,
    names_from_file,
    parse_optimizer,
    parse_scheduler,
)
from finetune_strategies.errors import ModelConfigError
from finetune_strategies.image.backbones import build_backbone
from finetune_strategies.image.weight_files import save_weights
from finetune_strategies.model.adapters import merge_adapters, tuner_modules
from finetune_strategies.validation import check_int, check_positive_float


class ImageClassifier(pl.LightningModule):
    """Classify images with a pretrained backbone and a new linear head.

    Args:
        num_classes: Number of classes (>= 2). Required; it is optional in the signature only so that
            the CLI can take it from the data or from a checkpoint.
        backbone: A timm model name (``"resnet18"``, ``"convnext_tiny.fb_in1k"``), a torchvision model
            as ``"torchvision:resnet18"``, or an ``nn.Module``.
        pretrained: ``True`` downloads the backbone's pretrained weights, ``False`` starts from random
            weights, and a path loads a local ``.safetensors`` / ``.pth`` file.
        labels: Class names, in class-index order, used in prediction files.
        head_dropout: Dropout before the head.
        optimizer: A ``torch.optim`` class name, case-insensitive (``"adam"``, ``"adamw"``, ``"sgd"``), or
            a dotted class path (see :mod:`finetune_strategies.core.optim`).
        lr: Learning rate of the optimizer's first param group.
        weight_decay: Weight decay.
        optimizer_kwargs: Extra optimizer arguments, e.g. ``{"momentum": 0.9}``.
        scheduler: ``None``, an alias (``"cosine"``, ``"step"``, ``"exponential"``, ``"linear"``,
            ``"plateau"``, ``"onecycle"``) or a ``torch.optim.lr_scheduler`` class name.
        scheduler_kwargs: Scheduler arguments, plus ``interval`` / ``monitor`` for Lightning.
        image_size: Input resolution the data should be resized to; ``None`` uses the backbone's.
        num_features: Feature size of a module backbone used whole (one without a known classifier).
        backbone_kwargs: Extra arguments for ``timm.create_model`` / ``torchvision.models.get_model``.
        compile: Compile the classifier in place with ``torch.compile`` (see the compiled-models page): the
            parameter names stay those of the eager model, so checkpoints are interchangeable, and the strategy
            makes room for the recompiles its phase changes cost.
        compile_kwargs: ``torch.compile`` arguments with ``compile``, e.g. ``{"mode": "reduce-overhead"}`` (CUDA
            graphs, GPU) or ``{"backend": "aot_eager"}``. ``None``: torch's defaults (inductor).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        backbone: str | nn.Module = "resnet18",
        pretrained: bool | str | Path = True,
        labels: list[str] | None = None,
        head_dropout: float = 0.0,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: str | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        image_size: int | None = None,
        num_features: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        compile: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        if num_classes is None:
            raise ModelConfigError("ImageClassifier needs num_classes (the number of classes, >= 2).")
        self.num_classes = check_int("num_classes", num_classes, minimum=2, error=ModelConfigError)
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(labels) != num_classes:
                raise ModelConfigError(
                    f"`labels` has {len(labels)} names but num_classes={num_classes}; give one per class."
                )
        self.labels = labels
        if not isinstance(head_dropout, (int, float)) or not 0 <= head_dropout < 1:
            raise ModelConfigError(f"`head_dropout` must be in [0, 1), got {head_dropout!r}.")
        self.optimizer_name = optimizer
        self.lr = check_positive_float("lr", lr, error=ModelConfigError)
        self.weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True, error=ModelConfigError)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.scheduler_name = scheduler
        self.scheduler_kwargs = dict(scheduler_kwargs or {})
        self._optimizer_spec()  # fail early on an unknown name or argument
        self._scheduler_spec()
        self.image_size = (
            None if image_size is None else check_int("image_size", image_size, minimum=1, error=ModelConfigError)
        )

        built = build_backbone(backbone, pretrained, num_features=num_features, backbone_kwargs=backbone_kwargs)
        self.backbone = built.module
        self.num_features = built.num_features
        self.backbone_source = built.source
        self._data_config = built.data_config
        layers: list[nn.Module] = [nn.Dropout(head_dropout)] if head_dropout else []
        self.head = nn.Sequential(*layers, nn.Linear(built.num_features, num_classes))
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.compile_kwargs = compile_option(self, compile, compile_kwargs)
        """The ``torch.compile`` arguments the classifier was compiled with; ``None``: not compiled."""

    # ------------------------------------------------------------------ model
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features, flattened to ``(batch, num_features)``."""
        out: torch.Tensor = self.backbone(images)
        return out.flatten(1) if out.ndim > 2 else out

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.head(self.features(images)))

    def data_config(self) -> dict[str, Any]:
        """timm-style data config (input size, interpolation, mean, std, crop) for this backbone."""
        config = dict(self._data_config)
        if self.image_size is not None:
            config["input_size"] = (3, self.image_size, self.image_size)
        return config

    def plain_backbone(self) -> nn.Module:
        """The backbone in its plain architecture: with adapters (``lora``), a copy with them merged in
        (the model keeps its adapters); else the backbone itself."""
        return merge_adapters(copy.deepcopy(self.backbone)) if tuner_modules(self.backbone) else self.backbone

    def save_backbone(self, path: str | Path) -> Path:
        """Save the backbone's weights; ``pretrained=path`` loads them into a new classifier, and timm
        (``pretrained_cfg_overlay={"file": path}``) or torchvision (``load_state_dict``, without the
        classifier) into the plain architecture. Adapters are merged in first (:meth:`plain_backbone`)."""
        return save_weights(self.plain_backbone(), path)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the backbone's adapters (``lora``) in every checkpoint, weights-only ones too."""
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

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        images, targets = batch[0], batch[1]
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, targets)
        metric(logits, targets)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(images), dim=-1)

    # ------------------------------------------------------------------ optimization
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
