"""Adapters from ``peft``: the layers they target, injecting them into a model, merging them back.

LoRA and the other injectable tuners of `peft <https://github.com/huggingface/peft>`_ replace each
targeted layer by a wrapper that holds the original layer (``base_layer``) and small adapter weights.
This module is the one place that talks to peft:

* :func:`resolve_targets` turns the core's selectors (:mod:`finetune_strategies.model.selectors`) or peft's
  bare layer names (``"qkv"``) into exact layer names; :func:`default_targets` picks layers when none
  are named;
* :func:`inject` runs ``peft.inject_adapter_in_model`` on one module and marks it with the config, so
  that a checkpoint can rebuild the same adapters (:func:`adapter_configs`, :func:`rebuild_adapters`)
  and a second injection is refused;
* :func:`merge_adapters` folds every adapter into its base layer (peft's merge) and removes the wrappers,
  leaving the model's original module names.

peft is an optional extra: ``pip install "finetune-strategies[peft]"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn

from finetune_strategies.errors import AdapterError, SelectorError, install_line, require
from finetune_strategies.model.selectors import is_inside, outermost, resolve_selector
from finetune_strategies.validation import did_you_mean

ADAPTER_NAME = "default"
PEFT_EXTRA = install_line("peft")
_MARK = "_finetune_strategies_adapter"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SHOWN = 8
M = TypeVar("M", bound=nn.Module)


def require_peft(what: str = "LoRA") -> ModuleType:
    """The ``peft`` module, or a :class:`~finetune_strategies.errors.MissingDependencyError` that names
    the extra to install."""
    return require("peft", "peft", what=what)


# ---------------------------------------------------------------------------------- which layers
def adaptable(module: nn.Module) -> bool:
    """Whether LoRA can adapt ``module`` and merge it back: a linear layer, an ungrouped convolution or
    an embedding.

    Not ``nn.MultiheadAttention``: its forward reads its projections' weights, not their modules, so
    peft's LoRA for it merges the adapters into the weights and takes them out again in every forward.
    That changes the frozen weights by rounding and replaces their parameter objects each step, which
    the optimizer and DDP hold. Its linear layers are left out for the same reason.
    """
    if isinstance(module, _CONVS):
        return module.groups == 1
    return isinstance(module, (nn.Linear, nn.Embedding))


def _join(root: str, name: str) -> str:
    return f"{root}.{name}" if root and name else root or name


def _layers(model: nn.Module, name: str) -> list[str]:
    """The adaptable layers at or inside ``name``, but none inside an ``nn.MultiheadAttention`` (see
    :func:`adaptable`); an embedding only when named itself."""
    top = model.get_submodule(name)
    parts = name.split(".")
    if any(isinstance(model.get_submodule(".".join(parts[:i])), nn.MultiheadAttention) for i in range(len(parts))):
        return []  # inside an attention layer
    attention = [sub for sub, m in top.named_modules() if isinstance(m, nn.MultiheadAttention)]
    found = [
        _join(name, sub)
        for sub, module in top.named_modules()
        if adaptable(module)
        and not isinstance(module, nn.Embedding)
        and not any(sub == a or sub.startswith(a + ".") or not a for a in attention)
    ]
    return found or ([name] if isinstance(top, nn.Embedding) else [])


def _candidates(model: nn.Module, roots: Sequence[tuple[str, nn.Module]]) -> str:
    """The adaptable layers of the roots, for an error message: their count, leaf names and examples."""
    layers = [n for root, _ in roots for n in _layers(model, root)]
    if not layers:
        return "They hold no layer LoRA can adapt."
    leaves = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in layers))
    examples = ", ".join(layers[:_SHOWN]) + (f" and {len(layers) - _SHOWN} more" if len(layers) > _SHOWN else "")
    return (
        f"Adaptable layers in {', '.join(r for r, _ in roots)}: {len(layers)}, named "
        f"{', '.join(leaves[:_SHOWN])}{' ...' if len(leaves) > _SHOWN else ''} ({examples})."
    )


def default_targets(model: nn.Module, roots: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """The layers LoRA adapts when none are named: every linear layer of the roots (for a timm ViT the
    attention's ``qkv`` and ``proj`` and the MLP's ``fc1`` and ``fc2``), outside ``nn.MultiheadAttention``
    layers; for a backbone without any (a ConvNet), every ungrouped convolution."""
    found = [n for root, _ in roots for n in _layers(model, root)]
    linear = [n for n in found if isinstance(model.get_submodule(n), nn.Linear)]
    if linear or found:
        return linear or found
    raise AdapterError(
        f"{', '.join(r for r, _ in roots)} has no layer LoRA can adapt: no nn.Linear or ungrouped "
        "nn.Conv1d/2d/3d outside nn.MultiheadAttention layers (grouped and depthwise convolutions cannot be "
        "merged). Name the layers with target_modules=[...] (an nn.Embedding, say), or pass peft_config=... "
        "for another peft tuner."
    )


def resolve_targets(model: nn.Module, roots: Sequence[tuple[str, nn.Module]], selectors: Iterable[str]) -> list[str]:
    """The exact names of the layers that ``selectors`` name in ``model``, in order.

    A selector is one of the core's (``backbone.blocks.*.attn.qkv``, ``re:.*(qkv|fc1)$``, ...) or, as
    in peft, a bare layer name (``qkv``) matching every layer of that name in the roots. A selected
    module that is not a layer stands for the adaptable layers inside it (``backbone.blocks.11``).
    """
    root_names = [name for name, _ in roots]
    chosen: list[str] = []
    for selector in selectors:
        try:
            names = resolve_selector(model, selector)
        except SelectorError as error:
            bare = re.fullmatch(r"[\w-]+", selector or "") is not None
            names = [
                _join(root, sub)
                for root, module in roots
                for sub, _ in module.named_modules()
                if bare and sub.rsplit(".", 1)[-1] == selector
            ]
            if not names and bare:
                leaves = {sub.rsplit(".", 1)[-1] for _, module in roots for sub, _ in module.named_modules() if sub}
                raise AdapterError(
                    f"target_modules: {selector!r} is neither a module of {type(model).__name__} (selectors start "
                    f"at its top level, e.g. '{root_names[0]}.<layer>') nor the name of a layer in "
                    f"{', '.join(root_names)}.{did_you_mean(selector, sorted(leaves))} {_candidates(model, roots)}"
                ) from None
            if not names:
                raise AdapterError(f"target_modules: {error} {_candidates(model, roots)}") from None
        outside = [n for n in names if not is_inside(n, root_names)]
        if outside:
            raise AdapterError(
                f"target_modules: {selector!r} selects {', '.join(outside[:_SHOWN])}, outside the frozen modules "
                f"({', '.join(root_names)}). LoRA adapts frozen layers; a module outside them trains whole anyway."
            )
        layers = [layer for name in names for layer in _layers(model, name)]
        if not layers:
            raise AdapterError(
                f"target_modules: {selector!r} selects {', '.join(names[:_SHOWN])}, which holds no layer LoRA "
                "can adapt (nn.Linear, ungrouped nn.Conv1d/2d/3d, nn.Embedding; none inside an "
                "nn.MultiheadAttention, whose peft adapter changes the frozen weights in every forward). "
                f"{_candidates(model, roots)}"
            )
        chosen += layers
    return list(dict.fromkeys(chosen))


def exact_pattern(names: Iterable[str]) -> str:
    """A regular expression that peft matches against exactly these module names and no others."""
    return "|".join(re.escape(name) for name in names)


# ---------------------------------------------------------------------------------- injecting
@dataclass(frozen=True)
class AdapterMark:
    """What :func:`inject` put into a module: the peft config (as JSON), the parameters peft made
    trainable (names relative to the module) and who asked (``origin``, e.g. a strategy's settings)."""

    config: str
    trainable: tuple[str, ...]
    origin: str = ""


def config_json(config: Any) -> str:
    """A peft config as JSON, from which :func:`config_from_json` builds it again."""

    def plain(value: Any) -> Any:
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        return str(value)

    data = config.to_dict()
    data.pop("peft_version", None)  # another peft release builds the same adapters
    return json.dumps(data, sort_keys=True, default=plain)


def config_from_json(text: str) -> Any:
    """The peft config that :func:`config_json` wrote."""
    peft = require_peft("Rebuilding adapters")
    return peft.PeftConfig.from_peft_type(**json.loads(text))


def tuner_modules(model: nn.Module) -> list[str]:
    """Names of the peft modules in ``model`` (adapter layers and peft's ``modules_to_save`` wrappers)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import AuxiliaryTrainingWrapper
    except ImportError:
        return []
    return [n for n, m in model.named_modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def saved_copy_originals(model: nn.Module) -> list[nn.Module]:
    """The original modules that peft's ``modules_to_save`` wrappers keep beside their trained copies.

    Their forward never runs, so they must never train: under DDP a trainable parameter that no forward
    uses fails the step with "Expected to have finished reduction" (peft issue #951).
    """
    try:
        from peft.utils import AuxiliaryTrainingWrapper
    except ImportError:
        return []
    return [m.original_module for m in model.modules() if isinstance(m, AuxiliaryTrainingWrapper)]


def mark_of(module: nn.Module) -> AdapterMark | None:
    """The mark :func:`inject` left on ``module``, if any."""
    mark = vars(module).get(_MARK)
    return mark if isinstance(mark, AdapterMark) else None


def inject(model: nn.Module, root: str, config: Any, origin: str = "") -> AdapterMark:
    """Inject the adapters of peft ``config`` into ``model.get_submodule(root)`` and mark it.

    Raises :class:`AdapterError` when the module already carries peft modules, or peft refuses.
    """
    peft = require_peft()
    module = model.get_submodule(root)
    present = tuner_modules(module)
    if present:
        raise AdapterError(
            f"{root or type(model).__name__} already carries peft adapters ({', '.join(present[:_SHOWN])}). "
            "Adapters are injected once: start from the model without them, or call "
            "finetune_strategies.merge_adapters(model) to fold them in first."
        )
    try:
        peft.inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise AdapterError(
            f"peft could not inject {type(config).__name__} into {root}: {error} {_candidates(model, [(root, module)])}"
        ) from error
    trainable = tuple(n for n, p in module.named_parameters() if p.requires_grad)
    mark = AdapterMark(config_json(config), trainable, origin)
    setattr(module, _MARK, mark)
    return mark


def adapter_configs(model: nn.Module) -> dict[str, str]:
    """``{module name: peft config JSON}`` of every module :func:`inject` put adapters into."""
    return {name: mark.config for name, module in model.named_modules() if (mark := mark_of(module)) is not None}


def rebuild_adapters(model: nn.Module, configs: Mapping[str, str], where: str) -> None:
    """Give ``model`` the adapters of ``configs`` (from :func:`adapter_configs`): inject those it lacks,
    and raise :class:`AdapterError` for a module that carries others."""
    for root, text in configs.items():
        try:
            module = model.get_submodule(root)
        except AttributeError:
            raise AdapterError(
                f"{where} has adapters in {root!r}, which {type(model).__name__} does not have."
            ) from None
        mark = mark_of(module)
        if mark is None:
            inject(model, root, config_from_json(text))
        elif not _same_config(mark.config, text):
            raise AdapterError(
                f"{where} was trained with other adapters in {root!r} than the model carries: the checkpoint's "
                f"peft config is {text}, the model's {mark.config}."
            )


def _same_config(first: str, second: str) -> bool:
    """Whether two config JSONs agree on every setting both have (a newer peft may add settings)."""
    a, b = json.loads(first), json.loads(second)
    return all(a[key] == b[key] for key in a.keys() & b.keys())


# ---------------------------------------------------------------------------------- merging
def merge_adapters(model: M) -> M:
    """Fold every adapter of ``model`` into its base layer in place and remove every peft module.

    The model keeps its original module and parameter names (``blocks.0.attn.qkv.weight``), so its
    state dict loads into the architecture without adapters (timm, torchvision). peft's
    ``modules_to_save`` wrappers give way to their trained copies. Returns ``model``.
    """
    require_peft("merge_adapters")
    names = outermost(tuner_modules(model))
    if "" in names:
        raise AdapterError(f"{type(model).__name__} is itself a peft layer; merge the module that holds it.")
    with torch.no_grad():
        for name in names:
            module: Any = model.get_submodule(name)  # a peft layer or wrapper
            parent, _, child = name.rpartition(".")
            if hasattr(module, "unload_and_optionally_merge_module"):
                plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
            else:
                module.merge(safe_merge=True)
                plain = module.get_base_layer()
            setattr(model.get_submodule(parent), child, plain)
    for module in model.modules():
        for attribute in ("peft_config", _MARK):
            if attribute in vars(module):
                delattr(module, attribute)
    return model
