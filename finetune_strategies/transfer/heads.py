"""New read-out heads whose outputs are summed with the pretrained head's, as in mlip's fine-tuning.

:func:`add_readout_heads` replaces the module ``head`` with :class:`SummedHeads`, which keeps the
pretrained module as ``head.pretrained`` and adds fresh copies of it as ``head.new.0``,
``head.new.1``, ... The model's output becomes ``pretrained(x) + new_0(x) + new_1(x) + ...``.

Each new head is a copy of the pretrained head with its parameters re-initialised
(``reset_parameters()``) and multiplied by ``scale_factor`` (default 0.1). A small factor starts the
model close to the pretrained one; 0 starts it exactly there but can stall gradients in deeper heads.

To train only the new heads, freeze the modules :func:`modules_outside` returns, e.g. with
``Freeze(attr_names=modules_outside(model, new_names))``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from finetune_strategies.errors import TransferConfigError
from finetune_strategies.validation import did_you_mean


class SummedHeads(nn.Module):
    """A pretrained read-out plus new heads taking the same input; the output is their sum."""

    def __init__(self, pretrained: nn.Module, new: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.pretrained = pretrained
        self.new = nn.ModuleList(new or [])

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.pretrained(*args, **kwargs)
        for head in self.new:
            output = output + head(*args, **kwargs)
        return output


def _fresh_copy(module: nn.Module, scale_factor: float) -> nn.Module:
    head = copy.deepcopy(module)
    resets = {m: getattr(m, "reset_parameters", None) for m in head.modules()}
    owners = [m for m in head.modules() if any(p is not None for p in m._parameters.values())]
    missing = [type(m).__name__ for m in owners if not callable(resets[m])]
    if missing:
        raise TransferConfigError(
            f"Cannot re-initialise a copy of the head ({type(module).__name__}): {sorted(set(missing))} own "
            "parameters but have no reset_parameters() method."
        )
    for reset in resets.values():
        if callable(reset):
            reset()
    with torch.no_grad():
        for param in head.parameters():
            param.mul_(scale_factor)
            param.requires_grad_(True)
    return head


def check_heads(num_heads: Any, scale_factor: Any) -> None:
    """Raise :class:`TransferConfigError` unless ``num_heads`` is an int >= 1 and ``scale_factor`` a
    finite number >= 0 (the checks of :func:`add_readout_heads` and of a config's ``new_heads``)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise TransferConfigError(f"num_heads must be an int >= 1, got {num_heads!r}.")
    if (
        isinstance(scale_factor, bool)
        or not isinstance(scale_factor, (int, float))
        or not (scale_factor >= 0 and math.isfinite(scale_factor))
    ):
        raise TransferConfigError(f"scale_factor must be a finite number >= 0, got {scale_factor!r}.")


def add_readout_heads(
    model: nn.Module,
    head: str = "head",
    num_heads: int = 1,
    scale_factor: float = 0.1,
    *,
    seed: int | None = None,
) -> list[str]:
    """Add ``num_heads`` new heads next to the read-out module ``head`` of ``model``.

    Load the pretrained weights first: the pretrained head's tensors move from ``head.*`` to
    ``head.pretrained.*``. If ``head`` already is a :class:`SummedHeads`, the new heads are appended.

    Returns:
        The dotted names of the new modules, e.g. ``["head.new.0"]``.
    """
    check_heads(num_heads, scale_factor)
    names = [n for n, _ in model.named_modules() if n]
    if head not in names:
        hint = did_you_mean(head, names, n=3)
        raise TransferConfigError(f"{type(model).__name__} has no module {head!r} to add read-out heads to.{hint}")
    current = model.get_submodule(head)
    summed = current if isinstance(current, SummedHeads) else SummedHeads(current)
    start = len(summed.new)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        for _ in range(num_heads):
            new = _fresh_copy(summed.pretrained, scale_factor)
            new.to(next(summed.pretrained.parameters(), torch.empty(0)).device)
            summed.new.append(new)
    if summed is not current:
        parent_name, _, attr = head.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, summed)
    return [f"{head}.new.{i}" for i in range(start, start + num_heads)]


def modules_outside(model: nn.Module, keep: list[str]) -> list[str]:
    """The fewest module names that cover every parameter of ``model`` except those under ``keep``.

    Freezing them trains only the ``keep`` modules (for example the new heads).
    """
    for name in keep:
        model.get_submodule(name)  # raises AttributeError for a wrong name

    def related(path: str) -> tuple[bool, bool]:
        inside = any(path == k or path.startswith(k + ".") for k in keep)
        above = any(k.startswith(path + ".") for k in keep) if path else bool(keep)
        return inside, above

    def cover(path: str, module: nn.Module) -> list[str]:
        inside, above = related(path)
        if inside or not any(True for _ in module.parameters()):
            return []
        if not above:
            return [path]
        if any(p is not None for p in module._parameters.values()):
            raise TransferConfigError(
                f"`{path or type(model).__name__}` owns parameters directly and also contains {keep}; "
                "its own "
                "parameters cannot be frozen apart from its children. Move them into a submodule."
            )
        found: list[str] = []
        for name, child in module.named_children():
            found.extend(cover(f"{path}.{name}" if path else name, child))
        return found

    return cover("", model)
