"""Class targets of the classification data modules: indices and names from int or str targets
(:func:`encode_targets`), and the stratified ``val_split`` hold-out (:func:`stratified_hold_out`)."""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from finetune_strategies.validation import ErrorClass

_SHOWN = 5


def listing(items: Sequence[Any], shown: int = _SHOWN) -> str:
    """The first ``shown`` items, comma-separated, and how many more there are."""
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value


def encode_targets(
    targets: dict[str, Any], labels: Sequence[str] | None, *, error: ErrorClass
) -> tuple[dict[str, list[int]], list[str]]:
    """Class indices per split and the class names, from int or str targets (``error`` is raised).

    Int targets are class indices (names are ``labels`` or ``"0"``, ``"1"``, ...); str targets are
    class names (ordered as in ``labels``, else sorted).
    """
    plain: dict[str, list[Any]] = {}
    for what, values in targets.items():
        if isinstance(values, (np.ndarray, torch.Tensor)):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise error(f"`{what}` must be a list of class indices or names, got {type(values).__name__}.")
        plain[what] = [_plain(v) for v in values]
    flat = [v for values in plain.values() for v in values]
    is_int = [isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in flat]
    is_str = [isinstance(v, str) for v in flat]
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(set(labels)) != len(labels):
            raise error(f"`labels` has duplicates: {labels}.")
    if all(is_int):
        bad = sorted({v for v in flat if v < 0 or (labels is not None and v >= len(labels))})
        if bad:
            bound = f"< {len(labels)} (the number of labels)" if labels is not None else ">= 0"
            raise error(f"Targets must be class indices {bound}; got {listing(bad)}.")
        names = labels if labels is not None else [str(i) for i in range(max(flat, default=-1) + 1)]
        return {k: [int(v) for v in values] for k, values in plain.items()}, names
    if all(is_str):
        names = labels if labels is not None else sorted(set(flat))
        unknown = sorted(set(flat) - set(names))
        if unknown:
            raise error(f"Targets {listing(unknown)} are not in `labels` {names}.")
        return {k: [names.index(v) for v in values] for k, values in plain.items()}, names
    odd = [v for v, i, s in zip(flat, is_int, is_str, strict=True) if not (i or s)]
    kinds = f"values like {listing(odd)}" if odd else "a mix of ints and strings"
    raise error(f"Targets must be all class indices (int) or all class names (str); got {kinds}.")


def stratified_hold_out(
    targets: Sequence[int], fraction: float, seed: int, *, error: ErrorClass, what: str = "samples"
) -> tuple[list[int], list[int]]:
    """Indices (train, validation) that hold out ``fraction`` of each class's samples (at least one of each
    class stays in training), shuffled with ``seed``; both sorted."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    held: list[int] = []
    for indices in by_class.values():
        rng.shuffle(indices)
        count = min(round(len(indices) * fraction), len(indices) - 1)
        held.extend(indices[:count])
    if not held:
        raise error(
            f"val_split={fraction} holds out no sample of the {len(targets)} training {what}; "
            "raise it or give validation data."
        )
    kept = set(held)
    return [i for i in range(len(targets)) if i not in kept], sorted(held)
