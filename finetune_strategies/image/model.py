"""``ImageClassifier``: a ``backbone`` (timm, torchvision or any module) and a linear ``head``.

The fine-tuning strategies freeze ``backbone`` (their default ``attr_names``) and leave ``head``
trainable. The optimizer is built over the parameters that require grad when training starts, so
a strategy can add the backbone as a new param group when it unfreezes it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from finetune_strategies.core.compiled import compile_option
from finetune_strategies.errors import ModelConfigError
from finetune_strategies.image.backbones import build_backbone
from finetune_strategies.image.weight_files import save_weights
from finetune_strategies.model.adapters import merge_adapters, tuner_modules
from finetune_strategies.tasks.classifier import ClassifierModule
from finetune_strategies.validation import check_int


class ImageClassifier(ClassifierModule):
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
        self.set_classes(num_classes, labels, "num_classes")
        if not isinstance(head_dropout, (int, float)) or not 0 <= head_dropout < 1:
            raise ModelConfigError(f"`head_dropout` must be in [0, 1), got {head_dropout!r}.")
        self.set_optimization(optimizer, lr, weight_decay, optimizer_kwargs, scheduler, scheduler_kwargs)
        self.image_size = (
            None if image_size is None else check_int("image_size", image_size, minimum=1, error=ModelConfigError)
        )

        built = build_backbone(backbone, pretrained, num_features=num_features, backbone_kwargs=backbone_kwargs)
        self.backbone = built.module
        self.num_features = built.num_features
        self.backbone_source = built.source
        self._data_config = built.data_config
        layers: list[nn.Module] = [nn.Dropout(head_dropout)] if head_dropout else []
        self.head = nn.Sequential(*layers, nn.Linear(built.num_features, self.num_classes))
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

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        images, targets = batch[0], batch[1]
        return self.classification_step(self(images), targets, stage)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(images), dim=-1)
