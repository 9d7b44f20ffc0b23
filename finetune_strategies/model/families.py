"""What kind of model a module is, seen through the wrappers that hide it.

The families known: timm models, torchvision classifiers and Hugging Face ``transformers`` models.
The wrappers seen through: ``torch.compile`` (``_orig_mod``), ``DistributedDataParallel`` and
``DataParallel`` (``module``), FSDP1 (``_fsdp_wrapped_module``), and a peft model (``PeftModel.base_model``,
then the tuner's ``model``). A wrapper keeps the parameters of the model it holds, so the same
parameters are found through it, under names that carry the wrapper's attribute.

Nothing here imports ``transformers`` or ``peft``: a module can only be one of their classes when the
package is already imported.
"""

from __future__ import annotations

import sys
from typing import Literal, get_args

from torch import nn

Family = Literal["timm", "torchvision", "transformers", "sequential"]
FAMILIES: tuple[str, ...] = get_args(Family)

TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")
"""Where torchvision classifiers keep their classifier, in the order looked for."""


def _peft_inner(module: nn.Module) -> tuple[str, nn.Module] | None:
    peft = sys.modules.get("peft")
    if peft is None:
        return None
    if isinstance(module, peft.PeftModel):
        return "base_model", module.base_model
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    if tuners is not None and isinstance(module, tuners.BaseTuner):
        return "model", module.model
    return None


def wrapped(module: nn.Module) -> tuple[str, nn.Module] | None:
    """``(attribute, module)`` of the model ``module`` wraps, or ``None`` when it wraps none."""
    if type(module).__name__ == "OptimizedModule" and isinstance(module._modules.get("_orig_mod"), nn.Module):
        return "_orig_mod", module._modules["_orig_mod"]  # type: ignore[return-value]
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return "module", module.module
    inner = module._modules.get("_fsdp_wrapped_module")
    if inner is not None:
        return "_fsdp_wrapped_module", inner
    return _peft_inner(module)


def unwrap(module: nn.Module) -> tuple[str, nn.Module]:
    """The model inside every wrapper around ``module``, and its dotted path from ``module`` (``""``
    when ``module`` is not wrapped)."""
    path: list[str] = []
    while (inner := wrapped(module)) is not None:
        path.append(inner[0])
        module = inner[1]
    return ".".join(path), module


def is_transformers_model(module: nn.Module) -> bool:
    """A Hugging Face ``transformers`` ``PreTrainedModel``."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def is_timm_model(module: nn.Module) -> bool:
    """A timm model: it has ``get_classifier`` / ``reset_classifier`` and an integer ``num_features``."""
    return (
        callable(getattr(module, "get_classifier", None))
        and callable(getattr(module, "reset_classifier", None))
        and isinstance(getattr(module, "num_features", None), int)
    )


def is_torchvision_classifier(module: nn.Module) -> bool:
    """A model from ``torchvision.models`` that has a classifier under one of :data:`TORCHVISION_HEADS`."""
    return type(module).__module__.startswith("torchvision.models.") and any(
        isinstance(module._modules.get(name), nn.Module) for name in TORCHVISION_HEADS
    )


def family_of(module: nn.Module) -> Family | None:
    """The family of an unwrapped module, or ``None``. ``nn.Sequential`` counts as ``"sequential"``."""
    if is_transformers_model(module):
        return "transformers"
    if is_timm_model(module):
        return "timm"
    if is_torchvision_classifier(module):
        return "torchvision"
    if type(module) is nn.Sequential:
        return "sequential"
    return None
