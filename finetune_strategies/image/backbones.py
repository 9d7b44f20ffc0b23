"""Build a headless backbone from a timm name, a torchvision name or a module.

* ``"resnet18"`` (any ``timm.list_models()`` name, with an optional ``.tag``, or ``hf-hub:...``):
  ``timm.create_model(name, pretrained=..., num_classes=0)`` gives pooled features.
* ``"torchvision:resnet18"``: ``torchvision.models.get_model``. The classifier is found under
  ``fc``, ``classifier``, ``heads`` or ``head`` (the first that exists) and its last
  ``nn.Linear`` is replaced by ``nn.Identity``; layers before it (VGG's MLP, ConvNeXt's norm) stay.
* an ``nn.Module``: a timm model loses its classifier via ``reset_classifier(0)``; other modules
  are treated like torchvision models, or used whole when ``num_features`` is given.

``pretrained`` is ``False``, ``True`` (download from the hub) or a local weight file. A file must
fit the headless backbone exactly; the original classifier's keys are dropped, as timm does when
``num_classes`` differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from finetune_strategies.errors import (
    BackboneError,
    FinetuningError,
    PretrainedWeightsError,
    UnknownBackboneError,
    WeightMatchError,
)
from finetune_strategies.image.timm_api import model_data_config
from finetune_strategies.image.weight_files import (
    check_fits,
    check_weight_path,
    diff_weights,
    mismatch_message,
    read_weights,
)
from finetune_strategies.model.families import TORCHVISION_HEADS, is_timm_model
from finetune_strategies.validation import close_matches

TORCHVISION_PREFIX = "torchvision:"
HEAD_ATTRIBUTES = TORCHVISION_HEADS
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")

Pretrained = bool | str | Path


def imagenet_data_config() -> dict[str, Any]:
    """timm-style data config with ImageNet defaults, for backbones that carry none."""
    return {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }


@dataclass
class Backbone:
    """A headless feature extractor and what the classifier head needs to know about it."""

    module: nn.Module
    num_features: int
    source: str  # "timm", "torchvision" or "module"
    data_config: dict[str, Any] = field(default_factory=imagenet_data_config)


def _hint(name: str, candidates: list[str], prefix: str = "") -> str:
    """`` Did you mean: a, b?`` (the wording the CLI shows) with up to five close backbone names."""
    close = close_matches(name, candidates, n=5)
    return f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""


def _unknown_backbone(name: str) -> UnknownBackboneError:
    candidates = list(timm.list_models()) + [TORCHVISION_PREFIX + n for n in torchvision.models.list_models()]
    hint = _hint(name, candidates)
    return UnknownBackboneError(
        f"Unknown backbone {name!r}.{hint} Use a timm model name (see timm.list_models('*pattern*')) "
        f"or a torchvision one as '{TORCHVISION_PREFIX}<name>' (see torchvision.models.list_models())."
    )


def _num_features(model: nn.Module) -> int:
    features = getattr(model, "num_features", None)
    if not isinstance(features, int):
        raise BackboneError(f"{type(model).__name__} has no integer `num_features`.")
    return features


def _pretrained_path(pretrained: Pretrained) -> Path | None:
    if isinstance(pretrained, bool):
        return None
    if isinstance(pretrained, (str, Path)):
        return check_weight_path(pretrained)
    raise PretrainedWeightsError(
        f"`pretrained` must be True, False or a path to a weight file, got {pretrained!r} "
        f"({type(pretrained).__name__})."
    )


def _download_failed(name: str, error: Exception) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"Could not fetch pretrained weights for {name!r} ({type(error).__name__}: {error}). The hub may be "
        "unreachable: pass pretrained=False, or pretrained='path/to/weights.safetensors' for a local file."
    )


# ---------------------------------------------------------------------------------------------- timm
def _timm_backbone(name: str, pretrained: Pretrained, kwargs: dict[str, Any]) -> Backbone:
    if not name.startswith(_HUB_PREFIXES) and not timm.is_model(name):
        raise _unknown_backbone(name)
    path = _pretrained_path(pretrained)
    if path is None:
        try:
            model = timm.create_model(name, pretrained=bool(pretrained), num_classes=0, **kwargs)
        except FinetuningError:
            raise
        except Exception as error:
            if not pretrained and not name.startswith(_HUB_PREFIXES):
                raise
            raise _download_failed(name, error) from error
    else:
        model = _timm_from_file(name, path, kwargs)
    return Backbone(model, _num_features(model), "timm", model_data_config(model))


def _classifier_names(model: nn.Module) -> list[str]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return [names] if isinstance(names, str) else list(names)


def _timm_from_file(name: str, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    weights = read_weights(path)
    target = f"timm backbone {name!r}"
    overlay = {"file": str(path)}
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
    except RuntimeError as error:  # load_state_dict refused: report the keys and shapes
        reference = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        diff = diff_weights(weights, reference.state_dict(), ignore=_classifier_names(reference))
        raise WeightMatchError(mismatch_message(path, target, diff)) from error
    # timm loads non-strictly once it drops the classifier, so check what it silently skipped.
    check_fits(path, weights, model, target, ignore=_classifier_names(model))
    return model


# --------------------------------------------------------------------------------------- torchvision
def find_head(module: nn.Module) -> tuple[str, nn.Linear] | None:
    """The qualified name and module of the classifier's last ``nn.Linear``, or None."""
    for attr in HEAD_ATTRIBUTES:
        try:
            head = module.get_submodule(attr)
        except AttributeError:
            continue
        if isinstance(head, nn.Linear):
            return attr, head
        linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            name, linear = linears[-1]
            return f"{attr}.{name}", linear
    return None


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, leaf, new)


def _strip_head(module: nn.Module, what: str) -> tuple[int, str]:
    found = find_head(module)
    if found is None:
        raise BackboneError(
            f"Cannot find the classifier of {what} ({type(module).__name__}): looked for an nn.Linear under "
            f"{', '.join(HEAD_ATTRIBUTES)}. Pass num_features=<feature size> to use the module whole as the "
            "backbone, or remove its classifier yourself."
        )
    name, linear = found
    _replace(module, name, nn.Identity())
    return linear.in_features, name


def _load_file(module: nn.Module, path: Path, target: str, drop: list[str]) -> None:
    weights = read_weights(path)
    prefixes = tuple(f"{d}." for d in drop)
    weights = {k: v for k, v in weights.items() if not k.startswith(prefixes)}
    check_fits(path, weights, module, target)
    module.load_state_dict(weights)


def _torchvision_backbone(name: str, pretrained: Pretrained, kwargs: dict[str, Any]) -> Backbone:
    model_name = name[len(TORCHVISION_PREFIX) :]
    available = torchvision.models.list_models()
    if model_name not in available:
        hint = _hint(model_name, available, TORCHVISION_PREFIX)
        raise UnknownBackboneError(
            f"Unknown torchvision model {model_name!r}.{hint} See torchvision.models.list_models()."
        )
    path = _pretrained_path(pretrained)
    weights = "DEFAULT" if pretrained is True else None
    try:
        model = torchvision.models.get_model(model_name, weights=weights, **kwargs)
    except Exception as error:
        if weights is None:
            raise
        raise _download_failed(name, error) from error
    num_features, head_name = _strip_head(model, name)
    if path is not None:
        _load_file(model, path, f"torchvision backbone {name!r}", drop=[head_name])
    return Backbone(model, num_features, "torchvision")


# ------------------------------------------------------------------------------------------ modules
def _module_backbone(module: nn.Module, pretrained: Pretrained, num_features: int | None) -> Backbone:
    if pretrained is True:
        raise PretrainedWeightsError(
            "pretrained=True needs a backbone name. For a module, load its weights yourself or pass "
            "pretrained='path/to/weights.safetensors'."
        )
    path = _pretrained_path(pretrained)
    target = f"backbone module {type(module).__name__}"
    if is_timm_model(module):
        module.reset_classifier(0)  # type: ignore[operator]
        if path is not None:
            _load_file(module, path, target, drop=_classifier_names(module))
        return Backbone(module, _num_features(module), "timm", model_data_config(module))
    if num_features is not None:
        if path is not None:
            _load_file(module, path, target, drop=[])
        return Backbone(module, num_features, "module")
    features, head_name = _strip_head(module, target)
    if path is not None:
        _load_file(module, path, target, drop=[head_name])
    return Backbone(module, features, "module")


def build_backbone(
    backbone: str | nn.Module,
    pretrained: Pretrained = False,
    *,
    num_features: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """Build a headless backbone; see the module docstring for what ``backbone`` may be."""
    kwargs = dict(backbone_kwargs or {})
    if isinstance(backbone, nn.Module):
        if kwargs:
            raise BackboneError("backbone_kwargs only apply to a backbone given by name.")
        return _module_backbone(backbone, pretrained, num_features)
    if not isinstance(backbone, str) or not backbone:
        raise BackboneError(
            f"`backbone` must be a timm model name, '{TORCHVISION_PREFIX}<name>' or an nn.Module, got {backbone!r}."
        )
    if num_features is not None:
        raise BackboneError("num_features only applies to a backbone given as a module.")
    if backbone.startswith(TORCHVISION_PREFIX):
        return _torchvision_backbone(backbone, pretrained, kwargs)
    return _timm_backbone(backbone, pretrained, kwargs)
