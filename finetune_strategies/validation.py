"""Argument checks shared by the core, ``image`` and ``transfer``, with messages that say what was expected.

Every check raises :class:`StrategySpecTypeError` for a value of the wrong type and
:class:`StrategySpecError` for a wrong value, unless it is given ``error``: the one exception class
the caller raises for both (``TransferConfigError``, ``ModelConfigError``, ...).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from finetune_strategies.errors import StrategySpecError, StrategySpecTypeError

ErrorClass = type[Exception]


def close_matches(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``choices`` that look like ``word``, closest first (:func:`difflib.get_close_matches`)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` (or `` Did you mean 'x', 'y'?`` for n > 1 matches), with a leading space;
    '' when nothing is close."""
    close = close_matches(word, choices, n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def check_known_keys(
    keys: Iterable[Any], allowed: Sequence[str], where: str, *, error: ErrorClass = StrategySpecError
) -> None:
    """Raise ``error`` naming every key not in ``allowed``, each with a hint, and the allowed keys."""
    unknown = [key for key in keys if key not in allowed]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = close_matches(str(key), allowed)  # per key, in parentheses: config errors list several
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise error(f"{where}: unknown key(s) {', '.join(hints)}. Allowed keys: {', '.join(allowed)}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_mapping(name: str, value: Any, *, example: str = "{...}", error: ErrorClass | None = None) -> dict[str, Any]:
    """Return ``value`` as a dict if it is a mapping with string keys; ``example`` shows one in the message."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise (error or StrategySpecTypeError)(
            f"`{name}` must be a mapping with string keys, e.g. {example}, got {value!r}."
        )
    return dict(value)


def check_bool(name: str, value: Any, *, error: ErrorClass | None = None) -> bool:
    """Return ``value`` if it is a real bool; ints and strings are rejected."""
    if not isinstance(value, bool):
        raise (error or StrategySpecTypeError)(
            f"`{name}` must be True or False, got {value!r} ({type(value).__name__})."
        )
    return value


def check_epoch(name: str, value: Any, *, error: ErrorClass | None = None) -> int:
    """Return ``value`` as a non-negative epoch index (epochs count from 0)."""
    if not _is_int(value):
        raise (error or StrategySpecTypeError)(
            f"`{name}` must be an int epoch (counted from 0), got {value!r} ({type(value).__name__})."
        )
    if value < 0:
        raise (error or StrategySpecError)(f"`{name}` must be >= 0 (epochs count from 0), got {value}.")
    return int(value)


def check_int(name: str, value: Any, *, minimum: int | None = None, error: ErrorClass | None = None) -> int:
    """Return ``value`` if it is an int (bools are rejected), and ``>= minimum`` when one is given."""
    bound = "" if minimum is None else f" >= {minimum}"
    if not _is_int(value):
        raise (error or StrategySpecTypeError)(
            f"`{name}` must be an int{bound}, got {value!r} ({type(value).__name__})."
        )
    if minimum is not None and value < minimum:
        raise (error or StrategySpecError)(f"`{name}` must be{bound}, got {value}.")
    return int(value)


def check_positive_int(name: str, value: Any, *, error: ErrorClass | None = None) -> int:
    """Return ``value`` if it is an int >= 1."""
    return check_int(name, value, minimum=1, error=error)


def check_non_negative_int(name: str, value: Any, *, error: ErrorClass | None = None) -> int:
    """Return ``value`` if it is an int >= 0."""
    return check_int(name, value, minimum=0, error=error)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False, error: ErrorClass | None = None) -> float:
    """Return ``value`` as a float that is > 0 (or >= 0 with ``allow_zero``) and finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise (error or StrategySpecTypeError)(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    number = float(value)
    too_small = number < 0 if allow_zero else number <= 0
    if too_small or number != number or number in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise (error or StrategySpecError)(f"`{name}` must be a finite number {bound}, got {value!r}.")
    return number


def check_names(name: str, value: Any, *, error: ErrorClass | None = None) -> tuple[str, ...]:
    """Return a non-empty tuple of attribute names from a string or a sequence of strings."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise (error or StrategySpecTypeError)(
            f"`{name}` must be an attribute name or a non-empty list of names, e.g. 'backbone' or "
            f"['backbone', 'neck'], got {value!r}."
        )
    return tuple(names)
