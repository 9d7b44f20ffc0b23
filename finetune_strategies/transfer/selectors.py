"""Module selectors: the names a stage's ``freeze_modules`` list takes.

A selector is a dotted path of module names, where any part may carry position brackets:

* ``encoder.layers.0`` - a module by its dotted name. Children of ``nn.Sequential`` and
  ``nn.ModuleList`` are named by their index, so ``net.0`` is the first layer of ``net`` and
  MLatom's "layer 6" of an MLP is ``net.6``.
* ``net[-1]`` - a child by position (registration order, negative counts from the end), for any
  module, not only containers.
* ``net[0:4]`` - the children at positions 0, 1, 2 and 3: a Python slice, end excluded, either end
  may be left out (``net[2:]``, ``net[:-1]``).
* Parts chain: ``encoder.layers[0:2].attn`` is ``attn`` of the first two layers.

A selector resolves to plain dotted names, which go to the core ``Freeze`` callback.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn

from finetune_strategies.errors import TransferConfigError

_PART = re.compile(r"^(?P<name>[^\[\]]+)(?P<brackets>(?:\[[^\[\]]*\])*)$")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_INDEX = re.compile(r"^\s*-?\d+\s*$")
_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


@dataclass(frozen=True)
class _Part:
    name: str
    positions: tuple[int | slice, ...]


def _parse(selector: str) -> list[_Part]:
    if not isinstance(selector, str) or not selector.strip():
        raise TransferConfigError(f"A module selector must be a non-empty string, got {selector!r}.")
    parts = []
    for text in selector.split("."):
        match = _PART.match(text)
        if match is None:
            raise TransferConfigError(
                f"Module selector {selector!r}: cannot read {text!r}. Expected names joined by dots, "
                "each optionally followed by [i] or [start:stop], e.g. 'net.0', 'net[-1]', 'net[0:4]'."
            )
        positions: list[int | slice] = []
        for inner in _BRACKET.findall(match.group("brackets")):
            if _INDEX.match(inner):
                positions.append(int(inner))
            elif (found := _SLICE.match(inner)) is not None:
                start, stop = (None if g is None else int(g) for g in found.groups())
                positions.append(slice(start, stop))
            else:
                raise TransferConfigError(
                    f"Module selector {selector!r}: [{inner}] is not a position. Use [i] or [start:stop]."
                )
        parts.append(_Part(match.group("name").strip(), tuple(positions)))
    return parts


def check_selector(selector: str) -> str:
    """Return ``selector`` if its syntax is valid (it is not looked up in a model)."""
    _parse(selector)
    return selector


def _child(model: nn.Module, path: str, name: str, selector: str) -> str:
    parent = model.get_submodule(path) if path else model
    if name not in parent._modules or parent._modules[name] is None:
        children = list(parent._modules)
        close = difflib.get_close_matches(name, children, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f"`{path}`" if path else f"the model ({type(model).__name__})"
        raise TransferConfigError(
            f"Module selector {selector!r}: {where} has no child module {name!r}.{hint} "
            f"Its children: {', '.join(children) or 'none'}."
        )
    return f"{path}.{name}" if path else name


def _positions(model: nn.Module, path: str, position: int | slice, selector: str) -> list[str]:
    names = [n for n, m in model.get_submodule(path)._modules.items() if m is not None]
    if isinstance(position, int):
        if not -len(names) <= position < len(names):
            raise TransferConfigError(
                f"Module selector {selector!r}: position {position} is out of range, `{path}` has "
                f"{len(names)} children ({', '.join(names) or 'none'})."
            )
        chosen = [names[position]]
    else:
        chosen = names[position]
        if not chosen:
            raise TransferConfigError(
                f"Module selector {selector!r}: [{position.start}:{position.stop}] selects none of the "
                f"{len(names)} children of `{path}` ({', '.join(names) or 'none'})."
            )
    return [f"{path}.{n}" for n in chosen]


def resolve_selector(model: nn.Module, selector: str) -> list[str]:
    """The dotted names of the modules ``selector`` picks in ``model``, in order."""
    paths = [""]
    for part in _parse(selector):
        paths = [_child(model, path, part.name, selector) for path in paths]
        for position in part.positions:
            paths = [name for path in paths for name in _positions(model, path, position, selector)]
    return paths


def resolve_selectors(model: nn.Module, selectors: list[str] | tuple[str, ...]) -> list[str]:
    """Resolve every selector; drop duplicates and names inside another selected module."""
    names: list[str] = []
    for selector in selectors:
        for name in resolve_selector(model, selector):
            if name not in names:
                names.append(name)
    return [n for n in names if not any(n.startswith(other + ".") for other in names)]
