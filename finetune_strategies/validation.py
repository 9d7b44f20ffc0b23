"""Argument checks shared by the strategies, with messages that say what was expected."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable
from typing import Any

from finetune_strategies.errors import StrategySpecError, StrategySpecTypeError


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a real bool; ints and strings are rejected."""
    if not isinstance(value, bool):
        raise StrategySpecTypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")
    return value


def check_epoch(name: str, value: Any) -> int:
    """Return ``value`` as a non-negative epoch index (epochs count from 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StrategySpecTypeError(
            f"`{name}` must be an int epoch (counted from 0), got {value!r} ({type(value).__name__})."
        )
    if value < 0:
        raise StrategySpecError(f"`{name}` must be >= 0 (epochs count from 0), got {value}.")
    return int(value)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StrategySpecTypeError(f"`{name}` must be an int >= 1, got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise StrategySpecError(f"`{name}` must be >= 1, got {value}.")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StrategySpecTypeError(f"`{name}` must be an int >= 0, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise StrategySpecError(f"`{name}` must be >= 0, got {value}.")
    return int(value)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float that is > 0 (or >= 0 with ``allow_zero``) and finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StrategySpecTypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    number = float(value)
    too_small = number < 0 if allow_zero else number <= 0
    if too_small or number != number or number in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise StrategySpecError(f"`{name}` must be a finite number {bound}, got {value!r}.")
    return number


def check_names(name: str, value: Any) -> tuple[str, ...]:
    """Return a non-empty tuple of attribute names from a string or a sequence of strings."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise StrategySpecTypeError(
            f"`{name}` must be an attribute name or a non-empty list of names, e.g. 'backbone' or "
            f"['backbone', 'neck'], got {value!r}."
        )
    return tuple(names)


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` (or `` Did you mean 'x', 'y'?`` for several), with a leading space; '' when
    nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def check_known_keys(
    keys: Iterable[Any], allowed: Iterable[str], where: str, *, error: type[Exception] = StrategySpecTypeError
) -> None:
    """Raise ``error`` naming every key not in ``allowed`` (with the closest allowed key) and the allowed keys."""
    allowed = list(allowed)
    unknown = [key for key in keys if key not in allowed]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise error(f"{where}: unknown key(s) {', '.join(hints)}. Allowed keys: {', '.join(allowed)}.")
