"""Default image transforms, built with timm from a backbone's data config.

The data config (input size, interpolation, mean, std, crop) is taken, in this order, from:

1. the ``backbone`` name given to the data module (its timm pretrained config);
2. the LightningModule the trainer runs, when it has a ``data_config()`` method
   (:class:`~finetune_strategies.image.ImageClassifier` does);
3. ImageNet defaults (224 px).

``image_size`` overrides the input size in every case. The training transform is timm's
(random resized crop, flip, colour jitter) unless ``augment=False``, which trains on the
evaluation transform (resize and centre crop). Transforms receive RGB ``PIL.Image`` objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm

from finetune_strategies.errors import ImageDataError, UnknownBackboneError
from finetune_strategies.image.backbones import TORCHVISION_PREFIX, imagenet_data_config
from finetune_strategies.image.timm_api import name_data_config, transform

Transform = Callable[[Any], Any]


def backbone_data_config(backbone: str) -> dict[str, Any]:
    """The data config of a backbone given by name, without building the model."""
    if backbone.startswith(TORCHVISION_PREFIX):
        return imagenet_data_config()
    if not timm.is_model(backbone):
        raise UnknownBackboneError(
            f"Unknown backbone {backbone!r} for the data config; use a timm model name or '{TORCHVISION_PREFIX}<name>'."
        )
    return name_data_config(backbone) or imagenet_data_config()


def with_image_size(config: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """``config`` with its input size replaced by ``image_size`` (square), if given."""
    config = dict(config)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    return config


def build_transforms(
    config: dict[str, Any], augment: bool, transform_kwargs: dict[str, Any] | None = None
) -> tuple[Transform, Transform]:
    """(train, eval) transforms for a data config; ``transform_kwargs`` go to ``create_transform``."""
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    base = {k: config[k] for k in keys if k in config}
    extra = dict(transform_kwargs or {})
    try:
        evaluation = transform(**base, is_training=False)
        train = transform(**base, **extra, is_training=True) if augment else evaluation
    except TypeError as error:
        message = f"Bad transform_kwargs {extra!r} for timm's create_transform: {error}"
        raise ImageDataError(message) from error
    return train, evaluation
