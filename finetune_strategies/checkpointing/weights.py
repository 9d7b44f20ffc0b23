"""Read a state dict from a weight file: the one loader behind ``ImageClassifier(pretrained=path)`` and
transfer learning's ``pre_trained_model_path``.

* ``.safetensors`` files are read with safetensors; ``.ckpt``, ``.pt``, ``.pth`` and ``.bin`` files
  with ``torch.load(weights_only=True)``, which refuses to unpickle anything but tensors and plain
  containers. ``weights_only=False`` opts in to full unpickling, for files you trust.
* A state dict wrapped in a dict is unwrapped: a Lightning checkpoint's ``state_dict``, or timm's
  ``state_dict_ema`` / ``model_ema`` / ``state_dict`` / ``model`` (EMA weights first). A whole
  pickled ``nn.Module`` gives its ``state_dict()``.
* A ``module.`` or ``_orig_mod.`` prefix that every key carries (DDP, ``torch.compile``) is removed;
  a Lightning checkpoint's keys are the LightningModule's own names and are kept as they are.

Every problem raises the caller's ``error`` class (a missing file :class:`MissingPathError`) with a
message that names the file and the cause.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load_file
from torch import nn

from finetune_strategies.errors import MissingPathError, PretrainedWeightsError
from finetune_strategies.validation import ErrorClass

WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin")
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_LIGHTNING_VERSION_KEY = "pytorch-lightning_version"

PathLike = str | os.PathLike[str]


def check_weight_file(
    path: PathLike, *, suffixes: Sequence[str] = WEIGHT_SUFFIXES, error: ErrorClass = PretrainedWeightsError
) -> Path:
    """Return ``path`` as a Path if it names an existing file with one of ``suffixes``."""
    file = Path(path)
    if file.suffix not in suffixes:
        raise error(
            f"Weight file {str(file)!r}: unsupported file type {file.suffix!r}; use one of {', '.join(suffixes)}."
        )
    if not file.is_file():
        raise MissingPathError(f"Weight file {str(file)!r} does not exist.")
    return file


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def state_dict_of(obj: Any, source: str, *, error: ErrorClass = PretrainedWeightsError) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict in what a weight file held (see the module docstring);
    ``source`` names the file in messages."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    lightning = isinstance(obj, Mapping) and _LIGHTNING_VERSION_KEY in obj
    if isinstance(obj, Mapping):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        obj = obj if wrapper is None else obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise error(f"{source} does not hold a state dict (a mapping of names to tensors): got {type(obj).__name__}.")
    wrong = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if wrong:
        raise error(
            f"{source} is not a state dict: {len(wrong)} entries are not name -> tensor, e.g. {wrong[:5]!r}. "
            "Save `model.state_dict()`, or a Lightning checkpoint."
        )
    state = dict(obj)
    return state if lightning else _strip_wrapper_prefixes(state)


def torch_load(
    file: PathLike | BinaryIO,
    source: str,
    *,
    weights_only: bool,
    error: ErrorClass,
    opt_in: str,
    map_location: Any = "cpu",
) -> Any:
    """``torch.load`` of ``file`` (named ``source`` in messages) with every failure raised as ``error``.

    With ``weights_only=True`` a file that holds anything but tensors and plain containers is refused
    before any of its code runs; the error names what it holds and ends with ``opt_in``, which says
    how to allow it.
    """
    try:
        return torch.load(file, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as cause:
        if not weights_only:
            raise error(f"Cannot read {source} with torch.load: {cause}") from cause
        found = str(cause).split("WeightsUnpickler error: ")[-1].split(". ")[0].strip()  # torch's text, shortened
        names_a_class = "Unsupported global" in found or "Unsupported class" in found  # torch >= 2.4, before
        if not names_a_class:  # bytes that are no pickle at all
            raise error(
                f"Cannot read {source}: it is damaged or not a file torch.save wrote ({found or cause}). "
                "weights_only=False would not help; use an intact copy of the file."
            ) from cause
        raise error(
            f"Cannot read {source} with weights_only=True: it holds objects other than tensors ({found}), and "
            f"unpickling them would run code stored in the file. {opt_in}"
        ) from cause
    except Exception as cause:
        raise error(f"Cannot read {source} with torch.load: {cause}") from cause


def read_state_dict(
    path: PathLike,
    *,
    weights_only: bool = True,
    suffixes: Sequence[str] = WEIGHT_SUFFIXES,
    error: ErrorClass = PretrainedWeightsError,
) -> dict[str, torch.Tensor]:
    """Read the state dict in a weight file; ``suffixes`` are the file types the caller accepts.

    ``weights_only=False`` lets ``torch.load`` unpickle arbitrary objects (a whole saved module, or a
    checkpoint with custom hyperparameter objects): it runs code from the file, so use it only for
    files you trust.
    """
    file = check_weight_file(path, suffixes=suffixes, error=error)
    source = f"Weight file {str(file)!r}"
    if file.suffix == ".safetensors":
        try:
            loaded: Any = load_file(file, device="cpu")
        except Exception as cause:  # any decoder failure: report the file and the cause
            raise error(f"Cannot read weight file {str(file)!r} as safetensors: {cause}") from cause
    else:
        loaded = torch_load(
            file,
            f"weight file {str(file)!r}",
            weights_only=weights_only,
            error=error,
            opt_in="Save `model.state_dict()` instead, or, if you trust the file, opt in to unpickling it with "
            "weights_only=False (`weights_only: false` in a transfer config).",
        )
    return state_dict_of(loaded, source, error=error)
