"""Local weight files for a backbone: read them, check that they fit it, and save a backbone's weights.

A weight file is a ``.safetensors`` file or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``)
holding a state dict; :mod:`finetune_strategies.checkpointing.weights` reads it (unwrapping ``state_dict`` /
``model``, EMA weights first, and removing DDP / ``torch.compile`` prefixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from finetune_strategies.checkpointing.weights import check_weight_file, read_state_dict
from finetune_strategies.errors import PretrainedWeightsError, WeightMatchError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_SHOWN = 8  # keys listed per kind of problem in an error message


def check_weight_path(path: str | Path) -> Path:
    """Return ``path`` as a Path if it names an existing backbone weight file."""
    return check_weight_file(path, suffixes=WEIGHT_SUFFIXES)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a backbone weight file into a flat ``{name: tensor}`` dict (see the module docstring)."""
    return read_state_dict(path, suffixes=WEIGHT_SUFFIXES)


@dataclass(frozen=True)
class WeightsDiff:
    """How a state dict differs from the one a module expects."""

    missing: list[tuple[str, tuple[int, ...]]]
    unexpected: list[tuple[str, tuple[int, ...]]]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, file shape, model shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def diff_weights(
    weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], ignore: Iterable[str] = ()
) -> WeightsDiff:
    """Compare ``weights`` with ``expected``; keys under an ``ignore`` prefix (a classifier) are skipped."""
    prefixes = tuple(f"{p}." for p in ignore)

    def kept(key: str) -> bool:
        return not key.startswith(prefixes)

    return WeightsDiff(
        missing=[(k, tuple(v.shape)) for k, v in expected.items() if k not in weights and kept(k)],
        unexpected=[(k, tuple(v.shape)) for k, v in weights.items() if k not in expected and kept(k)],
        mismatched=[
            (k, tuple(v.shape), tuple(expected[k].shape))
            for k, v in weights.items()
            if k in expected and kept(k) and tuple(v.shape) != tuple(expected[k].shape)
        ],
    )


def _listing(items: list[Any], describe: Any) -> str:
    shown = ", ".join(describe(item) for item in items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return shown + more


def mismatch_message(path: str | Path, target: str, diff: WeightsDiff) -> str:
    """A message naming the keys and shapes that keep a weight file from fitting ``target``."""
    lines = [f"Weight file {str(path)!r} does not fit {target}:"]
    if diff.mismatched:
        lines.append(
            f"  {len(diff.mismatched)} key(s) with a different shape (file vs model): "
            + _listing(diff.mismatched, lambda m: f"{m[0]} {list(m[1])} vs {list(m[2])}")
        )
    if diff.missing:
        lines.append(
            f"  {len(diff.missing)} key(s) the model needs but the file lacks: "
            + _listing(diff.missing, lambda m: f"{m[0]} {list(m[1])}")
        )
    if diff.unexpected:
        lines.append(
            f"  {len(diff.unexpected)} key(s) in the file that the model does not have: "
            + _listing(diff.unexpected, lambda m: f"{m[0]} {list(m[1])}")
        )
    if any(k.startswith("backbone.") for k, _ in diff.unexpected):
        lines.append(
            "  The file's keys start with 'backbone.': it looks like an ImageClassifier checkpoint. Load it "
            "with ImageClassifier.load_from_checkpoint, or save the backbone alone with save_backbone()."
        )
    else:
        lines.append("  Check that the file was saved from the same architecture as the backbone.")
    return "\n".join(lines)


def check_fits(
    path: str | Path, weights: Mapping[str, torch.Tensor], module: nn.Module, target: str, ignore: Iterable[str] = ()
) -> None:
    """Raise :class:`WeightMatchError` unless ``weights`` fit ``module``'s state dict exactly (but for
    the keys under an ``ignore`` prefix)."""
    diff = diff_weights(weights, module.state_dict(), ignore)
    if diff:
        raise WeightMatchError(mismatch_message(path, target, diff))


def save_weights(module: nn.Module, path: str | Path) -> Path:
    """Save ``module``'s state dict as ``.safetensors``, or with ``torch.save`` for other suffixes."""
    file = Path(path)
    if file.suffix not in WEIGHT_SUFFIXES:
        raise PretrainedWeightsError(
            f"Cannot save weights to {str(file)!r}: use a name ending in {', '.join(WEIGHT_SUFFIXES)}."
        )
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    if file.suffix == ".safetensors":
        save_file(state, str(file))
    else:
        torch.save(state, file)
    return file
