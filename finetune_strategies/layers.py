"""What a "layer" is when a strategy unfreezes the last ``n`` layers of a backbone.

Three units are offered:

* ``"param_modules"`` (default): every module that directly owns parameters, in definition order.
  Activations, dropout and pooling are never counted, so "the last 2 layers" of a timm
  ``resnet18`` are ``layer4.1.conv2`` and ``layer4.1.bn2``.
* ``"blocks"``: the fine-grained blocks of timm's ``group_matcher`` (stem, then each residual
  block or transformer block). Needs a timm model.
* ``"flash_leaves"``: Flash / Lightning ``BaseFinetuning.flatten_modules`` exactly: every leaf
  module, parameter-less ones included, plus parents that own parameters directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple, get_args

from timm.models import group_modules
from torch import nn

from finetune_strategies.errors import ScheduleError, StrategySpecError

LayerUnit = Literal["param_modules", "blocks", "flash_leaves"]
LAYER_UNITS: tuple[str, ...] = get_args(LayerUnit)


class Layer(NamedTuple):
    """One unfreezable unit: a display name and the modules it covers."""

    name: str
    modules: tuple[nn.Module, ...]


def owns_parameters(module: nn.Module) -> bool:
    """True when ``module`` holds at least one parameter itself (not through children)."""
    return any(p is not None for p in module._parameters.values())


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _param_module_layers(prefix: str, root: nn.Module) -> list[Layer]:
    return [Layer(_qualified(prefix, n), (m,)) for n, m in root.named_modules() if owns_parameters(m)]


def _flash_leaf_layers(prefix: str, root: nn.Module) -> list[Layer]:
    # Same predicate as BaseFinetuning.flatten_modules: leaves, and parents with direct parameters.
    return [
        Layer(_qualified(prefix, n), (m,)) for n, m in root.named_modules() if not list(m.children()) or m._parameters
    ]


def _block_layers(prefix: str, root: nn.Module) -> list[Layer]:
    matcher = getattr(root, "group_matcher", None)
    if not callable(matcher):
        raise ScheduleError(
            f"layer_unit='blocks' needs a timm model with `group_matcher()`, but `{prefix or 'the model'}` "
            f"is a {type(root).__name__}. Use layer_unit='param_modules' for other models."
        )
    layers = []
    for names in group_modules(root, matcher(coarse=False)).values():
        parts = [n.split(".") for n in names]
        common = [p[0] for p in zip(*parts, strict=False) if len(set(p)) == 1]
        label = ".".join(common) if common else "+".join(names)
        layers.append(Layer(_qualified(prefix, label), tuple(root.get_submodule(n) for n in names)))
    return layers


_UNIT_BUILDERS = {
    "param_modules": _param_module_layers,
    "blocks": _block_layers,
    "flash_leaves": _flash_leaf_layers,
}


def list_layers(roots: Sequence[tuple[str, nn.Module]], unit: LayerUnit = "param_modules") -> list[Layer]:
    """List the layers of the named ``roots`` in order, counted in ``unit``."""
    if unit not in _UNIT_BUILDERS:
        raise StrategySpecError(f"layer_unit must be one of {list(LAYER_UNITS)}, got {unit!r}.")
    layers: list[Layer] = []
    for prefix, root in roots:
        layers.extend(_UNIT_BUILDERS[unit](prefix, root))
    return layers


def name_parameters(model: nn.Module, params: Iterable[nn.Parameter], prefix: str = "") -> str:
    """Provisional: the fewest module or parameter names whose parameters are exactly ``params``."""
    wanted = {id(p) for p in params}
    if not wanted:
        raise ValueError("name_parameters needs at least one parameter.")
    under: dict[str, set[int]] = {}
    names: dict[int, str] = {}
    for name, param in model.named_parameters():
        names.setdefault(id(param), name)
        parts = name.split(".")
        for depth in range(len(parts) + 1):
            under.setdefault(".".join(parts[:depth]), set()).add(id(param))
    chosen: list[str] = []
    for pid in sorted(wanted, key=lambda i: list(names).index(i)):
        parts = names[pid].split(".")
        for depth in range(len(parts) + 1):
            key = ".".join(parts[:depth])
            if under[key] <= wanted:
                if key not in chosen:
                    chosen.append(key)
                break
    full = [".".join(p for p in (prefix, c) if p) for c in chosen]
    return " + ".join(full) if len(full) <= 3 else f"{full[0]} + ... + {full[-1]} ({len(full)} modules)"
