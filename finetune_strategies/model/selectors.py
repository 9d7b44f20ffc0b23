"""Module selectors: the one language that names modules, in strategies, schedules and transfer stages.

A selector is one of:

* a dotted path of module names, where any part may carry position brackets:

  * ``encoder.layers.0`` - a module by its dotted name. Children of ``nn.Sequential`` and
    ``nn.ModuleList`` are named by their index, so ``net.0`` is the first layer of ``net``.
  * ``net[-1]`` - a child by position (registration order, negative counts from the end), for any
    module, not only containers.
  * ``net[0:4]`` - the children at positions 0, 1, 2 and 3: a Python slice, end excluded, either end
    may be left out (``net[2:]``, ``net[:-1]``).
  * Parts chain: ``encoder.layers[0:2].attn`` is ``attn`` of the first two layers.

* a pattern with ``*`` or ``?`` (shell-style, matched against whole dotted names; ``*`` also
  matches dots): ``backbone.blocks.*`` is every block of ``backbone.blocks``;
* a regular expression after ``re:``, matched against whole dotted names:
  ``re:backbone\\.blocks\\.(10|11)``.

A selector resolves to dotted module names. Resolving a list drops duplicates and names that lie
inside another selected module, so ``backbone.blocks.*`` gives the blocks, not also their children.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from finetune_strategies.errors import SelectorError
from finetune_strategies.validation import did_you_mean

REGEX_PREFIX = "re:"
_PART = re.compile(r"^(?P<name>[^\[\]]+)(?P<brackets>(?:\[[^\[\]]*\])*)$")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_INDEX = re.compile(r"^\s*-?\d+\s*$")
_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")
_SHOWN = 8


@dataclass(frozen=True)
class _Part:
    name: str
    positions: tuple[int | slice, ...]


def _is_pattern(selector: str) -> bool:
    return selector.startswith(REGEX_PREFIX) or "*" in selector or "?" in selector


def _compile(selector: str) -> re.Pattern[str]:
    if selector.startswith(REGEX_PREFIX):
        try:
            return re.compile(selector[len(REGEX_PREFIX) :])
        except re.error as error:
            raise SelectorError(f"Module selector {selector!r}: not a valid regular expression ({error}).") from None
    return re.compile(fnmatch.translate(selector))


def _parse(selector: str) -> list[_Part]:
    parts = []
    for text in selector.split("."):
        match = _PART.match(text)
        if match is None:
            raise SelectorError(
                f"Module selector {selector!r}: cannot read {text!r}. Expected names joined by dots, "
                "each optionally followed by [i] or [start:stop], e.g. 'net.0', 'net[-1]', 'net[0:4]'; "
                "or a pattern such as 'backbone.blocks.*' or 're:backbone\\.blocks\\.1[01]'."
            )
        positions: list[int | slice] = []
        for inner in _BRACKET.findall(match.group("brackets")):
            if _INDEX.match(inner):
                positions.append(int(inner))
            elif (found := _SLICE.match(inner)) is not None:
                start, stop = (None if g is None else int(g) for g in found.groups())
                positions.append(slice(start, stop))
            else:
                raise SelectorError(
                    f"Module selector {selector!r}: [{inner}] is not a position. Use [i] or [start:stop]."
                )
        parts.append(_Part(match.group("name").strip(), tuple(positions)))
    return parts


def check_selector(selector: str) -> str:
    """Return ``selector`` if its syntax is valid (it is not looked up in a model)."""
    if not isinstance(selector, str) or not selector.strip():
        raise SelectorError(f"A module selector must be a non-empty string, got {selector!r}.")
    if _is_pattern(selector):
        _compile(selector)
    else:
        _parse(selector)
    return selector


def _child(model: nn.Module, path: str, name: str, selector: str) -> str:
    parent = model.get_submodule(path) if path else model
    if name not in parent._modules or parent._modules[name] is None:
        children = list(parent._modules)
        where = f"`{path}`" if path else f"the model ({type(model).__name__})"
        raise SelectorError(
            f"Module selector {selector!r}: {where} has no child module {name!r}.{did_you_mean(name, children)} "
            f"Its children: {', '.join(children) or 'none'}."
        )
    return f"{path}.{name}" if path else name


def _positions(model: nn.Module, path: str, position: int | slice, selector: str) -> list[str]:
    names = [n for n, m in model.get_submodule(path)._modules.items() if m is not None]
    if isinstance(position, int):
        if not -len(names) <= position < len(names):
            raise SelectorError(
                f"Module selector {selector!r}: position {position} is out of range, `{path}` has "
                f"{len(names)} children ({', '.join(names) or 'none'})."
            )
        chosen = [names[position]]
    else:
        chosen = names[position]
        if not chosen:
            raise SelectorError(
                f"Module selector {selector!r}: [{position.start}:{position.stop}] selects none of the "
                f"{len(names)} children of `{path}` ({', '.join(names) or 'none'})."
            )
    return [f"{path}.{n}" for n in chosen]


def _matching(model: nn.Module, selector: str) -> list[str]:
    pattern = _compile(selector)
    names = [name for name, _ in model.named_modules() if name]
    found = [name for name in names if pattern.fullmatch(name)]
    if not found:
        if selector.startswith(REGEX_PREFIX):  # the expression's literal text
            probe = re.sub(r"[\\^$()|+*?{}\[\]]", "", selector[len(REGEX_PREFIX) :])
        else:  # the fixed part before the first wildcard
            probe = re.split(r"[*?]", selector)[0].rstrip(".")
        close = did_you_mean(probe, names, n=3, cutoff=0.4)
        shown = ", ".join(n for n in names if "." not in n)
        raise SelectorError(
            f"Module selector {selector!r} matches no module of {type(model).__name__}.{close} "
            f"Its top-level modules: {shown or 'none'}."
        )
    return found


def resolve_selector(model: nn.Module, selector: str) -> list[str]:
    """The dotted names of the modules ``selector`` picks in ``model``, in model order."""
    check_selector(selector)
    if _is_pattern(selector):
        return _matching(model, selector)
    paths = [""]
    for part in _parse(selector):
        paths = [_child(model, path, part.name, selector) for path in paths]
        for position in part.positions:
            paths = [name for path in paths for name in _positions(model, path, position, selector)]
    return paths


def is_inside(name: str, roots: Iterable[str]) -> bool:
    """Whether the module ``name`` is one of ``roots`` or inside one (``""`` is the whole model)."""
    return any(not root or name == root or name.startswith(root + ".") for root in roots)


def outermost(names: Iterable[str]) -> list[str]:
    """``names`` without duplicates and without names that lie inside another of them, in order."""
    unique = list(dict.fromkeys(names))
    return [n for n in unique if not any(n.startswith(other + ".") for other in unique if other)]


def resolve_selectors(model: nn.Module, selectors: Iterable[str]) -> list[str]:
    """Resolve every selector; drop duplicates and names inside another selected module."""
    return outermost(name for selector in selectors for name in resolve_selector(model, selector))


def select_modules(model: nn.Module, selectors: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that ``selectors`` pick in ``model`` (see :func:`resolve_selectors`)."""
    return [(name, model.get_submodule(name)) for name in resolve_selectors(model, selectors)]
