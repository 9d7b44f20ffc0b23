"""Load pretrained weights from a file and copy them into a model, module by module.

``modules_to_match`` maps a module name in the pretrained weights to a module name in the new model,
``{"name_in_pretrained": "name_in_new"}``. Names may be dotted (``encoder.layers.0``); every tensor
under a named module is matched, under the same relative name. ``""`` names the whole model on
either side (``{"": "model"}`` loads a plain ``nn.Module`` state dict into ``self.model`` of a
LightningModule). ``None`` matches everything by identical names.

Nothing is copied unless every requested tensor exists on both sides with the same shape; otherwise
one error lists every problem, naming the module, the tensor and both shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from finetune_strategies.checkpointing.weights import read_state_dict
from finetune_strategies.errors import WeightMatchError
from finetune_strategies.validation import close_matches

_MAX_LISTED = 20


@dataclass(frozen=True)
class MatchReport:
    """What a match copied: ``pairs`` of (pretrained tensor name, model tensor name)."""

    source: str
    pairs: tuple[tuple[str, str], ...]
    num_values: int
    not_loaded: tuple[str, ...]
    """Model tensors that kept their own values (not covered by the match)."""

    @property
    def num_tensors(self) -> int:
        return len(self.pairs)

    def __str__(self) -> str:
        text = f"Matched {self.num_tensors} tensors ({self.num_values:,} values) from {self.source}"
        if self.not_loaded:
            shown = ", ".join(self.not_loaded[:_MAX_LISTED])
            more = f" and {len(self.not_loaded) - _MAX_LISTED} more" if len(self.not_loaded) > _MAX_LISTED else ""
            text += f"; {len(self.not_loaded)} model tensors kept their own values: {shown}{more}"
        return text + "."


def load_pretrained_state_dict(path: str | os.PathLike[str], *, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read a state dict from a Lightning ``.ckpt``, a torch ``.pt``/``.pth``/``.bin`` or a ``.safetensors`` file.

    ``weights_only=False`` lets ``torch.load`` unpickle arbitrary objects (a whole saved module, or a
    checkpoint with custom hyperparameter objects); use it only for files you trust.
    """
    return read_state_dict(path, weights_only=weights_only, error=WeightMatchError)


def _under(key: str, module: str) -> bool:
    return not module or key == module or key.startswith(module + ".")


def _relocate(key: str, source: str, target: str) -> str:
    relative = key if not source else key[len(source) + 1 :]
    return ".".join(p for p in (target, relative) if p)


def _missing_module(name: str, keys: list[str], side: str) -> str:
    modules = sorted({".".join(k.split(".")[:depth]) for k in keys for depth in range(1, k.count(".") + 1)})
    close = close_matches(name, modules, n=3)
    hint = f" Close names: {', '.join(close)}." if close else ""
    top = sorted({k.split(".")[0] for k in keys})
    return f"module `{name}` is not in the {side}.{hint} Top-level names there: {', '.join(top)}."


def plan_match(
    model_state: Mapping[str, torch.Tensor],
    pretrained: Mapping[str, torch.Tensor],
    modules_to_match: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Pairs (pretrained name, model name) to copy; raises :class:`WeightMatchError` listing every problem."""
    mapping = {"": ""} if modules_to_match is None else dict(modules_to_match)
    problems: list[str] = []
    pairs: dict[str, str] = {}  # model name -> pretrained name
    for source, target in mapping.items():
        keys = [k for k in pretrained if _under(k, source)]
        if not keys:
            problems.append(_missing_module(source, list(pretrained), "pretrained weights"))
            continue
        if not any(_under(k, target) for k in model_state):
            problems.append(_missing_module(target, list(model_state), "new model"))
            continue
        label = f"`{source or '<all>'}` -> `{target or '<all>'}`"
        for key in keys:
            name = _relocate(key, source, target)
            if name not in model_state:
                problems.append(f"{label}: pretrained tensor `{key}` maps to `{name}`, which the model does not have.")
            elif tuple(model_state[name].shape) != tuple(pretrained[key].shape):
                problems.append(
                    f"{label}: tensor `{key}` has shape {tuple(pretrained[key].shape)} in the pretrained "
                    f"weights, but `{name}` has shape {tuple(model_state[name].shape)} in the model."
                )
            elif name in pairs and pairs[name] != key:
                problems.append(f"{label}: `{name}` is matched twice, from `{pairs[name]}` and `{key}`.")
            else:
                pairs[name] = key
    if problems:
        listed = "\n  - ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise WeightMatchError(f"The pretrained weights do not match the model:\n  - {listed}{more}")
    return [(key, name) for name, key in pairs.items()]


def match_pretrained_weights(
    model: nn.Module,
    pretrained: Mapping[str, torch.Tensor],
    modules_to_match: Mapping[str, str] | None = None,
    *,
    source: str = "a state dict",
) -> MatchReport:
    """Copy the matched tensors of ``pretrained`` into ``model`` (all or nothing) and report them."""
    state = model.state_dict()
    pairs = plan_match(state, pretrained, modules_to_match)
    with torch.no_grad():
        for key, name in pairs:
            state[name].copy_(pretrained[key])
    loaded = {name for _, name in pairs}
    return MatchReport(
        source=source,
        pairs=tuple(pairs),
        num_values=sum(pretrained[key].numel() for key, _ in pairs),
        not_loaded=tuple(n for n in state if n not in loaded),
    )


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    modules_to_match: Mapping[str, str] | None = None,
    *,
    weights_only: bool = True,
) -> MatchReport:
    """Read ``path`` and copy its matched tensors into ``model``."""
    weights = load_pretrained_state_dict(path, weights_only=weights_only)
    return match_pretrained_weights(model, weights, modules_to_match, source=repr(os.fspath(path)))
