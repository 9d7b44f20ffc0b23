"""What a "layer" is when a strategy unfreezes the last ``n`` layers of a backbone.

:func:`list_layers` lists the layers of one or more frozen roots, bottom to top, in one of three units:

* ``"param_modules"`` (default): every module that directly owns parameters, in definition order.
  Activations, dropout and pooling are never counted, so "the last 2 layers" of a timm
  ``resnet18`` are ``layer4.1.conv2`` and ``layer4.1.bn2``.
* ``"blocks"``: residual / transformer blocks, with the stem first.

  - A timm model (one with a callable ``group_matcher``) is grouped by
    ``timm.models.group_parameters(root, root.group_matcher(coarse=False))``: the stem (for a ViT:
    ``cls_token``, ``pos_embed``, ``patch_embed``), then each block; a final norm joins the last
    block, parameters the matcher does not know (a classifier) form a last layer.
  - A wrapped model (``torch.compile``, DDP, a peft model: see :mod:`~finetune_strategies.model.families`)
    is grouped as the model it holds, so a compiled timm model has the same layers as the plain one.
  - Any other module is split structurally. A *block container* is a module with at least two
    children that own parameters, all of one *block class*, each holding at least
    ``MIN_BLOCK_SIZE`` (3) modules with parameters. A block class has its own ``forward`` (so not
    ``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``, nor a ``Sequential`` subclass that
    only stacks layers, such as torchvision's ``Conv2dNormActivation``); with the size bound this
    rules out conv-norm pairs and an attention's ``qkv``/``proj``. The root is split into its
    children; a module is split further when it is exactly ``nn.Sequential``/``ModuleList``/
    ``ModuleDict``, a block container, or has a block container or a module of a block class
    below it (so nested stages resolve to their innermost blocks). Every other module holding
    parameters is a *unit*; a unit of a block class is a *block* (so is a one-block stage's
    block). Parameters owned by a split module (torchvision ViT's ``class_token``,
    ``encoder.pos_embedding``) are *loose*. With blocks, the units before the first block plus
    the loose parameters form the ``stem`` layer, each block is a layer, a unit between two blocks
    (a downsample, a patch merging) joins the next block and units after the last block (final
    norm, classifier) join the last block, as timm does; in a Hugging Face ``transformers`` model they
    form a last layer of their own (BERT's pooler, GPT-2's ``ln_f``, Llama's final ``norm``), so its
    layers are the embeddings, each block, and the top. Without blocks (an MLP) every unit is a
    layer and the loose parameters, if any, form the first layer.

* ``"flash_leaves"``: Flash / Lightning ``BaseFinetuning.flatten_modules`` exactly: every leaf
  module, parameter-less ones included, plus parents that own parameters directly.

Every parameter of every root belongs to exactly one layer (a parameter shared by two modules
counts once, in the first layer that has it). :attr:`Layer.modules` are the modules whose *direct*
parameters make up the layer; a module's direct parameters never straddle two layers (a module
goes to the layer of its first parameter). A ``BatchNorm`` without parameters joins the layer that
contains it, else the layer of the closest preceding module, so its running statistics thaw with it.

Names are qualified with the root's prefix. A ``"param_modules"`` or ``"flash_leaves"`` layer is
named by its module (``backbone`` for a root's own parameters). A ``"blocks"`` layer is named by
:func:`name_parameters`: the fewest module or parameter names that cover exactly its parameters,
e.g. ``backbone.blocks.3 + backbone.norm``; a stem of several parts is called ``backbone.stem``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple, get_args

from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finetune_strategies.errors import StrategySpecError
from finetune_strategies.model.families import is_transformers_model, unwrap

LayerUnit = Literal["param_modules", "blocks", "flash_leaves"]
LAYER_UNITS: tuple[str, ...] = get_args(LayerUnit)

MAX_NAME_PARTS = 3
"""Names of more parameter sets are shortened to ``first + ... + last (N parts)``."""

MIN_BLOCK_SIZE = 3
"""A structural block holds at least this many modules that own parameters (a conv-norm pair does not)."""

_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class Layer(NamedTuple):
    """One unfreezable unit: a display name and the modules whose direct parameters it holds."""

    name: str
    modules: tuple[nn.Module, ...]


def owns_parameters(module: nn.Module) -> bool:
    """True when ``module`` holds at least one parameter itself (not through children)."""
    return any(p is not None for p in module._parameters.values())


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _direct(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


# ---------------------------------------------------------------------------------------- naming
class _Namer:
    """Names parameter sets of one module tree by the fewest covering module / parameter names."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._subtree: dict[int, frozenset[int]] = {}
        self.all_ids = self._collect(model)

    def _collect(self, module: nn.Module) -> frozenset[int]:
        known = self._subtree.get(id(module))
        if known is not None:
            return known
        ids = {id(p) for p in _direct(module)}
        for child in module.children():
            ids |= self._collect(child)
        self._subtree[id(module)] = frozen = frozenset(ids)
        return frozen

    def parts(self, ids: set[int]) -> list[str]:
        """Names relative to the model ("" for the model itself), in definition order."""
        if not ids:
            raise ValueError("Cannot name an empty set of parameters.")
        if not ids <= self.all_ids:
            raise ValueError(f"{len(ids - self.all_ids)} of the parameters are not in the {type(self.model).__name__}.")
        parts: list[str] = []
        covered: set[int] = set()

        def visit(name: str, module: nn.Module) -> None:
            subtree = self._subtree[id(module)]
            if not subtree or subtree <= covered or ids.isdisjoint(subtree):
                return
            if subtree <= ids:  # the whole module: one part
                parts.append(name)
                covered.update(subtree)
                return
            for pname, param in module._parameters.items():
                if param is not None and id(param) in ids and id(param) not in covered:
                    parts.append(_qualified(name, pname))
                    covered.add(id(param))
            for cname, child in module._modules.items():
                if child is not None:
                    visit(_qualified(name, cname), child)

        visit("", self.model)
        return parts

    def format(self, parts: Sequence[str], prefix: str) -> str:
        full = [_qualified(prefix, p) or type(self.model).__name__ for p in parts]
        if len(full) > MAX_NAME_PARTS:
            return f"{full[0]} + ... + {full[-1]} ({len(full)} parts)"
        return " + ".join(full)


def name_parameters(model: nn.Module, params: Iterable[nn.Parameter], prefix: str = "") -> str:
    """A short name for a set of parameters of ``model``.

    The fewest module or parameter names (relative to ``model``, each prefixed with ``prefix.``)
    whose parameters are exactly ``params``, in definition order, joined by ``" + "``; more than
    three are shortened to ``"first + ... + last (N parts)"``. The whole model is named ``prefix``
    (its class name without a prefix). Raises ``ValueError`` for an empty set or a foreign parameter.
    """
    namer = _Namer(model)
    return namer.format(namer.parts({id(p) for p in params}), prefix)


# ------------------------------------------------------------------------------- grouping drafts
class _Drafts(NamedTuple):
    """Layer index of every parameter (by id), the number of layers, which are stems, and fixed labels."""

    layer_of: dict[int, int]
    total: int
    stems: frozenset[int] = frozenset()
    labels: tuple[str, ...] = ()  # param_modules: the module names, relative to the root


def _param_module_drafts(root: nn.Module) -> _Drafts:
    layer_of: dict[int, int] = {}
    labels: list[str] = []
    for name, module in root.named_modules():
        direct = _direct(module)
        if not direct:
            continue
        index = layer_of.get(id(direct[0]))
        if index is None:  # a module whose first parameter is shared joins that parameter's layer
            index = len(labels)
            labels.append(name)
        for param in direct:
            layer_of.setdefault(id(param), index)
    return _Drafts(layer_of, len(labels), labels=tuple(labels))


def _matches(spec: Any, name: str) -> bool:
    if isinstance(spec, str):
        return re.match(spec, name) is not None
    if isinstance(spec, (list, tuple)):
        return any(_matches(s[0] if isinstance(s, (list, tuple)) else s, name) for s in spec)
    return False


def _timm_drafts(root: nn.Module, matcher: Any) -> _Drafts:
    named = dict(root.named_parameters())
    groups = [names for _, names in sorted(group_parameters(root, matcher).items())]
    layer_of = {id(named[n]): i for i, names in enumerate(groups) for n in names}
    stem = matcher.get("stem") if isinstance(matcher, dict) else None
    stems = frozenset(i for i, names in enumerate(groups) if stem and all(_matches(stem, n) for n in names))
    return _Drafts(layer_of, len(groups), stems)


def _is_block_class(cls: type[nn.Module]) -> bool:
    return cls.forward not in (nn.Sequential.forward, nn.Module.forward)


class _Structure:
    """The structural split of a module that has no timm ``group_matcher`` (see the module docstring)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.size = {id(m): sum(owns_parameters(d) for d in m.modules()) for m in root.modules()}
        self.block_classes = {type(c) for m in root.modules() for c in self._container_blocks(m)}
        self._below: dict[int, bool] = {}
        self.units: list[tuple[nn.Module, bool]] = []  # (unit, is a block)
        self.loose: list[nn.Parameter] = []
        self._walk(root)

    def _container_blocks(self, module: nn.Module) -> list[nn.Module]:
        kids = [c for c in module.children() if self.size[id(c)]]
        kinds = {type(c) for c in kids}
        if len(kids) < 2 or len(kinds) != 1 or not _is_block_class(kinds.pop()):
            return []
        return kids if all(self.size[id(c)] >= MIN_BLOCK_SIZE for c in kids) else []

    def _has_blocks_below(self, module: nn.Module) -> bool:
        known = self._below.get(id(module))
        if known is None:
            known = any(
                type(c) in self.block_classes or self._container_blocks(c) or self._has_blocks_below(c)
                for c in module.children()
            )
            self._below[id(module)] = known
        return known

    def _split(self, module: nn.Module) -> bool:
        return (
            module is self.root
            or type(module) in _PLAIN_CONTAINERS
            or bool(self._container_blocks(module))
            or self._has_blocks_below(module)
        )

    def _walk(self, module: nn.Module) -> None:
        if self._split(module):
            self.loose.extend(_direct(module))
            for child in module.children():
                self._walk(child)
        elif self.size[id(module)]:
            self.units.append((module, type(module) in self.block_classes))

    def drafts(self, top_apart: bool = False) -> _Drafts:
        """``top_apart``: units after the last block form a layer of their own, instead of joining it."""
        groups: list[list[nn.Parameter]] = []
        stems: frozenset[int] = frozenset()
        blocks = [i for i, (_, is_block) in enumerate(self.units) if is_block]
        if not blocks:
            groups = [self.loose] if self.loose else []
            groups += [list(unit.parameters()) for unit, _ in self.units]
        else:
            head: list[nn.Parameter] = list(self.loose)
            for unit, _ in self.units[: blocks[0]]:
                head.extend(unit.parameters())
            if head:
                groups, stems = [head], frozenset({0})
            bounds = [*blocks[1:], len(self.units)]
            start = blocks[0]
            for block, end in zip(blocks, bounds, strict=True):
                # the units between the previous block and this one, this block, and (last) the tail
                group = [p for unit, _ in self.units[start : block + 1] for p in unit.parameters()]
                after = self.units[block + 1 :] if end == len(self.units) else []
                tail = [p for unit, _ in after for p in unit.parameters()]
                groups += [group, tail] if top_apart and tail else [group + tail]
                start = block + 1
        layer_of: dict[int, int] = {}
        for index, group in enumerate(groups):
            for param in group:
                layer_of.setdefault(id(param), index)
        return _Drafts(layer_of, len(groups), stems)


def _block_drafts(root: nn.Module) -> _Drafts:
    _, model = unwrap(root)  # a compiled or wrapped model is grouped as the model it holds
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        return _timm_drafts(model, matcher(coarse=False))
    return _Structure(model).drafts(top_apart=is_transformers_model(model))


# -------------------------------------------------------------------------------------- assembly
def _assemble(prefix: str, root: nn.Module, drafts: _Drafts, taken: set[int], used: set[int]) -> list[Layer]:
    """Turn parameter drafts into layers of modules; ``taken``/``used`` carry ids across roots."""
    order = {id(m): i for i, m in enumerate(root.modules())}
    members: list[list[nn.Module]] = [[] for _ in range(drafts.total)]
    for module in root.modules():
        fresh = [p for p in _direct(module) if id(p) not in taken]
        if fresh and id(module) not in used:
            members[drafts.layer_of[id(fresh[0])]].append(module)

    namer = _Namer(root)
    kept: list[tuple[list[nn.Module], list[str], int]] = []
    for index, modules in enumerate(members):
        ids = {id(p) for m in modules for p in _direct(m)} - taken
        if not ids:  # only parameters that an earlier layer already holds
            continue
        taken.update(ids)
        used.update(id(m) for m in modules)
        kept.append((modules, namer.parts(ids), index))
    _attach_batchnorms(root, kept, used)

    layers = []
    for modules, parts, index in kept:
        if drafts.labels:  # one module per layer: named by the module, as in Flash and Lightning
            name = _qualified(prefix, drafts.labels[index]) or type(root).__name__
        elif index in drafts.stems and len(parts) > 1:
            name = _qualified(prefix, "stem")
        else:
            name = namer.format(parts, prefix)
        layers.append(Layer(name, tuple(sorted(modules, key=lambda m: order[id(m)]))))
    return layers


def _attach_batchnorms(root: nn.Module, kept: list[tuple[list[nn.Module], list[str], int]], used: set[int]) -> None:
    """Put every parameter-less BatchNorm in the layer that contains it, else the closest preceding one."""
    if not kept:
        return
    by_part = {part: i for i, (_, parts, _) in enumerate(kept) for part in parts}
    by_module = {id(m): i for i, (modules, _, _) in enumerate(kept) for m in modules}
    previous = 0
    for name, module in root.named_modules():
        if id(module) in by_module:
            previous = by_module[id(module)]
        elif isinstance(module, _BatchNorm) and not _direct(module) and id(module) not in used:
            pieces = name.split(".") if name else []
            ancestors = [".".join(pieces[:k]) for k in range(len(pieces), -1, -1)]
            index = next((by_part[a] for a in ancestors if a in by_part), previous)
            kept[index][0].append(module)
            used.add(id(module))


def _flash_leaf_layers(prefix: str, root: nn.Module, used: set[int]) -> list[Layer]:
    # Same predicate as BaseFinetuning.flatten_modules: leaves, and parents with direct parameters.
    layers = []
    for name, module in root.named_modules():
        if (not list(module.children()) or module._parameters) and id(module) not in used:
            used.add(id(module))
            layers.append(Layer(_qualified(prefix, name) or type(root).__name__, (module,)))
    return layers


def list_layers(
    roots: Sequence[tuple[str, nn.Module]], unit: LayerUnit = "param_modules", *, leave_out: Iterable[nn.Module] = ()
) -> list[Layer]:
    """List the layers of the named ``roots`` in order, counted in ``unit``.

    Each root's layers run bottom to top; roots follow in the order given. A module or parameter
    reachable from several roots belongs to the first. The modules in ``leave_out`` (a head inside a
    root), with everything in them, are in no layer.
    """
    if unit not in LAYER_UNITS:
        raise StrategySpecError(f"layer_unit must be one of {list(LAYER_UNITS)}, got {unit!r}.")
    layers: list[Layer] = []
    left_out = [m for module in leave_out for m in module.modules()]
    taken: set[int] = {id(p) for module in left_out for p in _direct(module)}
    used: set[int] = {id(module) for module in left_out}
    for prefix, root in roots:
        if unit == "flash_leaves":
            layers.extend(_flash_leaf_layers(prefix, root, used))
            continue
        drafts = _param_module_drafts(root) if unit == "param_modules" else _block_drafts(root)
        layers.extend(_assemble(prefix, root, drafts, taken, used))
    return layers
