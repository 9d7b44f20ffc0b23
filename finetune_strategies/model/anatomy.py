"""A model's anatomy: which modules are its pretrained backbone, which is its head, and its layers.

:func:`find_anatomy` answers for a model of a known family, or for a module (a LightningModule) that
holds exactly one such model at any depth:

========================  ==========================================  ==========================================
family                    head                                        layers (bottom to top)
========================  ==========================================  ==========================================
timm                      ``get_classifier()``, or the modules         timm's ``group_matcher``: the stem, each
                          ``pretrained_cfg["classifier"]`` names       block (the final norm joins the last one)
torchvision classifier    the first of ``fc``, ``classifier``,         the structural split of ``list_layers``
                          ``heads``, ``head``
``transformers``          every module outside the base model          the embeddings, each block of the layer
                          (``base_model_prefix``): ``classifier``,     list (``encoder.layer.N``, ``h.N``,
                          ``score``, ``lm_head``, ...)                 ``layers.N``), the final norm or pooler
``nn.Sequential``         its last child that holds parameters         the structural split
========================  ==========================================  ==========================================

The backbone is what a fine-tuning strategy freezes: for a ``transformers`` model its base model, for the
others the whole model *but* its head, which keeps training from the start. A head without parameters
(timm's ``num_classes=0``, an ``nn.Identity``) is no head: the whole model is the backbone, and a head
the LightningModule adds beside it trains.

Wrappers are seen through (:mod:`~finetune_strategies.model.families`): a ``torch.compile``\\ d, DDP,
FSDP1 or peft-wrapped model has the same backbone, head and layers as the model it holds, named by
their paths through the wrapper (``net._orig_mod.layer4``), which are the names the parameters have.

An ``nn.Sequential`` is recognised when it is the model asked about, or, in a search, when no model of
another family is found and it is the only child of the searched module that holds parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from finetune_strategies.errors import MissingModuleError
from finetune_strategies.model.families import TORCHVISION_HEADS, Family, family_of, unwrap
from finetune_strategies.model.layers import Layer, list_layers

WAYS_TO_NAME = (
    "give the LightningModule a `backbone` attribute (the module to freeze), define `modules_to_freeze()` "
    "on it, or pass attr_names=[...] to the strategy (module selectors, e.g. 'net[:-1]' or 're:net\\.layer[1-4]')"
)


@dataclass(frozen=True)
class Anatomy:
    """What :func:`find_anatomy` found. Every name is a dotted module path in the module it searched.

    Attributes:
        family: ``"timm"``, ``"torchvision"``, ``"transformers"`` or ``"sequential"``.
        model: Where the model sits (``""``: the module searched), its wrappers included.
        architecture: The model's class name.
        backbone: The module that holds the backbone: what a strategy freezes.
        head: The head's modules (inside ``backbone`` except for ``transformers``), which keep training.
        layers: The backbone's layers, bottom to top, the head left out (the ``"blocks"`` unit of
            :func:`~finetune_strategies.model.layers.list_layers`).
    """

    family: Family
    model: str
    architecture: str
    backbone: str
    head: tuple[str, ...]
    layers: tuple[Layer, ...]

    def describe(self) -> str:
        """One line, e.g. ``timm ResNet at `net`: freezes `net` except its head `net.fc`; 9 layers, ...``."""
        where = f"at `{self.model}`" if self.model else "(the model itself)"
        head = ", ".join(f"`{h}`" for h in self.head)
        inside = any(_inside(h, self.backbone) for h in self.head)
        frozen = f"`{self.backbone or self.architecture}`"
        if inside:
            frozen += f" except its head {head}"
        elif self.head:
            frozen += f"; the head {head} trains"
        else:
            frozen += " (no head with parameters inside the model)"
        span = f"{self.layers[0].name} to {self.layers[-1].name}" if self.layers else "none"
        return f"{self.family} {self.architecture} {where}: freezes {frozen}; {len(self.layers)} layers, {span}"


def _inside(name: str, root: str) -> bool:
    return not root or name == root or name.startswith(root + ".")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, module in model.named_modules() if module is target), None)


def _timm_head(model: nn.Module) -> list[str]:
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = config.get("classifier") if isinstance(config, dict) else None
    listed = [names] if isinstance(names, str) else list(names or ())
    found = []
    for name in listed:
        try:
            found.append((name, model.get_submodule(name)))
        except AttributeError:
            continue
    if not found:  # a config that names no module of this model: the module get_classifier() returns
        classifier = model.get_classifier()  # type: ignore[operator]
        path = _path_of(model, classifier) if isinstance(classifier, nn.Module) else None
        found = [(path, classifier)] if path else []
    return [name for name, module in found if _holds_parameters(module)]


def _torchvision_head(model: nn.Module) -> list[str]:
    for name in TORCHVISION_HEADS:
        module = model._modules.get(name)
        if module is not None and _holds_parameters(module):
            return [name]
    return []


def _sequential_head(model: nn.Module) -> list[str]:
    holding = [name for name, child in model.named_children() if _holds_parameters(child)]
    return holding[-1:] if len(holding) > 1 else []


def _transformers_parts(model: nn.Module) -> tuple[str, list[str]]:
    """The base model's path and the head's modules (every other child that holds parameters)."""
    base = getattr(model, "base_model", model)
    if base is model:
        return "", []
    prefix = _path_of(model, base) or ""
    head = [name for name, child in model.named_children() if child is not base and _holds_parameters(child)]
    return prefix, head


def anatomy_of(model: nn.Module, family: Family, prefix: str = "") -> Anatomy:
    """The anatomy of ``model`` (unwrapped), a model of ``family``; names are prefixed with ``prefix``."""
    if family == "transformers":
        base, head = _transformers_parts(model)
    else:
        base = ""
        head = {"timm": _timm_head, "torchvision": _torchvision_head, "sequential": _sequential_head}[family](model)
    root = model.get_submodule(base) if base else model
    inside = [model.get_submodule(h) for h in head if _inside(h, base)]  # a head beside the base model: in no layer
    backbone = _join(prefix, base)
    layers = list_layers([(backbone, root)], "blocks", leave_out=inside)
    return Anatomy(
        family=family,
        model=prefix,
        architecture=type(model).__name__,
        backbone=backbone,
        head=tuple(_join(prefix, h) for h in head),
        layers=tuple(layers),
    )


def _known_models(module: nn.Module, path: str = "") -> Iterator[tuple[str, nn.Module, Family]]:
    """The outermost models of a known family (``nn.Sequential`` aside) below ``module``, unwrapped."""
    for name, child in module.named_children():
        wrapper_path, inner = unwrap(child)
        full = _join(_join(path, name), wrapper_path)
        family = family_of(inner)
        if family is not None and family != "sequential":
            yield full, inner, family
        else:
            yield from _known_models(inner, full)


def find_anatomy(model: nn.Module) -> Anatomy:
    """The anatomy of ``model``, or of the one model of a known family that ``model`` holds.

    ``model`` may be a timm model, a torchvision classifier, a ``transformers`` model or an
    ``nn.Sequential``, wrapped or not; or any module (a LightningModule) that holds exactly one of them,
    at any depth (``self.net``, ``self.model.encoder``). Raises
    :class:`~finetune_strategies.errors.MissingModuleError` when it holds none or several, naming what
    it found.
    """
    prefix, inner = unwrap(model)
    family = family_of(inner)
    if family is not None:
        return anatomy_of(inner, family, prefix)
    found = list(_known_models(inner, prefix))
    if not found:
        holding = [(n, c) for n, c in inner.named_children() if _holds_parameters(c)]
        if len(holding) == 1 and type(unwrap(holding[0][1])[1]) is nn.Sequential:
            name, child = holding[0]
            wrapper_path, sequential = unwrap(child)
            return anatomy_of(sequential, "sequential", _join(_join(prefix, name), wrapper_path))
    if len(found) == 1:
        path, known, family = found[0]
        return anatomy_of(known, family, path)
    what = type(model).__name__
    if not found:
        children = ", ".join(f"{n} ({type(c).__name__})" for n, c in inner.named_children() if _holds_parameters(c))
        raise MissingModuleError(
            f"Cannot tell which modules of {what} are the pretrained backbone: it holds no timm, torchvision "
            f"or transformers model (its modules with parameters: {children or 'none'}). To say which, "
            f"{WAYS_TO_NAME}."
        )
    listed = ", ".join(f"`{path}` ({family} {type(known).__name__})" for path, known, family in found)
    raise MissingModuleError(
        f"{what} holds {len(found)} models that could be the pretrained backbone: {listed}. To say which, "
        f"{WAYS_TO_NAME}."
    )
