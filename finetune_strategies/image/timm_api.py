"""Typed wrappers of the few timm functions used here (timm ships them without annotations)."""

from __future__ import annotations

from typing import Any

from timm.data.config import resolve_data_config, resolve_model_data_config
from timm.data.transforms_factory import create_transform
from timm.models import get_pretrained_cfg
from torch import nn


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """The data config (input size, interpolation, mean, std, crop) of a timm model."""
    return dict(resolve_model_data_config(model))  # type: ignore[no-untyped-call]


def name_data_config(name: str) -> dict[str, Any] | None:
    """The data config of a timm model name, without building it; None if it has no pretrained config."""
    pretrained_cfg = get_pretrained_cfg(name)
    if pretrained_cfg is None:
        return None
    cfg = pretrained_cfg.to_dict()  # type: ignore[no-untyped-call]
    return dict(resolve_data_config(pretrained_cfg=cfg))  # type: ignore[no-untyped-call]


def transform(**kwargs: Any) -> Any:
    """``timm.data.create_transform``."""
    return create_transform(**kwargs)
