"""Checkpoints that keep only what trained, with a fingerprint of the frozen weights they leave out.

A run that freezes most of a model (``lora``, ``freeze``, ``freeze_unfreeze`` before its unfreeze)
would write the same frozen weights into every checkpoint. With ``save_trainable_only=True`` (the
default of ``lora``) a strategy writes only the parameters that are or were trainable in the run,
and every buffer, plus a record under :data:`RECORD_KEY`:

* ``frozen``: the names of the parameters left out;
* ``fingerprint``: SHA-256 over their names, dtypes, shapes and bytes (:func:`fingerprint`);
* ``source``: where the frozen weights came from (the model's class and its ``backbone`` and
  ``pretrained`` hyper-parameters);
* ``adapters``: the peft config of each module that carries adapters (written whenever there are
  adapters), so that a model built afresh gets the same ones.

Loading one (``fit``, ``validate``, ``test`` or ``predict`` with a ``ckpt_path`` on the library's
``Trainer`` or on any ``Trainer`` with a strategy among its callbacks; :func:`load_from_checkpoint`, or
``load_from_checkpoint`` of a module whose ``on_load_checkpoint`` calls :func:`complete_checkpoint`,
as :class:`~finetune_strategies.image.ImageClassifier` does) rebuilds what was left out from the model
as constructed, which must hold the same pretrained weights: :func:`complete_checkpoint` injects the
adapters, compares the fingerprint of the model's own frozen weights with the saved one, and puts them
into the checkpoint's state dict, which then loads strictly. Other weights raise
:class:`~finetune_strategies.errors.FrozenWeightsError`, naming both fingerprints and both sources,
before anything trains.

The fingerprint of a set of frozen weights is computed at the first save that leaves out exactly that
set, and reused while it stays the same: frozen weights do not change.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import torch
from lightning.pytorch import LightningModule
from torch import nn

from finetune_strategies.errors import FrozenWeightsError
from finetune_strategies.model.adapters import adapter_configs, rebuild_adapters

RECORD_KEY = "finetune_strategies_trainable_only"
M = TypeVar("M", bound=LightningModule)
_SHOWN = 8


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """``sha256:<hex>`` over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data)
    return "sha256:" + digest.hexdigest()


def describe_source(module: nn.Module) -> str:
    """Where ``module``'s weights come from, as far as it tells: its class and its ``backbone`` and
    ``pretrained`` hyper-parameters."""
    hparams = getattr(module, "hparams", None) or {}
    settings = [f"{key}={hparams[key]!r}" for key in ("backbone", "pretrained") if key in hparams]
    return type(module).__qualname__ + (f"({', '.join(settings)})" if settings else "")


def is_trainable_only(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint`` leaves out frozen weights (and needs :func:`complete_checkpoint`)."""
    record = checkpoint.get(RECORD_KEY)
    return isinstance(record, Mapping) and bool(record.get("frozen"))


@dataclass
class TrainableOnlySession:
    """The parameters a fit has kept frozen so far, and the fingerprint of the last set left out."""

    never_trained: set[str] | None = None
    cached: tuple[tuple[str, ...], str] | None = None

    def note(self, module: nn.Module) -> None:
        """Record which parameters are frozen now; one that ever trained is never left out."""
        frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        self.never_trained = frozen if self.never_trained is None else self.never_trained & frozen

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """On resume: what the checkpoint left out has never trained; with a full one, assume all did."""
        record = checkpoint.get(RECORD_KEY)
        self.never_trained = set(record.get("frozen", [])) if isinstance(record, Mapping) else set()

    def save(self, module: nn.Module, checkpoint: dict[str, Any], trainable_only: bool) -> None:
        """Write the record into ``checkpoint``; with ``trainable_only``, leave out the never-trained
        parameters of its state dict."""
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        dropped: list[str] = []
        if trainable_only:
            self.note(module)
            dropped = sorted(n for n in self.never_trained or () if n in state)
        if not dropped:
            record_adapters(module, checkpoint)
            return
        key = tuple(dropped)
        if self.cached is None or self.cached[0] != key:
            self.cached = (key, fingerprint((n, state[n]) for n in dropped))
        for name in dropped:
            del state[name]
        checkpoint[RECORD_KEY] = _record(module, dropped, self.cached[1])


def _record(module: nn.Module, frozen: list[str], digest: str) -> dict[str, Any]:
    return {
        "version": 1,
        "frozen": frozen,
        "fingerprint": digest,
        "source": describe_source(module),
        "adapters": adapter_configs(module),
    }


def record_adapters(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Record ``module``'s adapters in a full checkpoint that has no record yet, so that a model built
    afresh gets them before loading it. Call it from a LightningModule's ``on_save_checkpoint``: unlike a
    callback's, it also runs for weights-only checkpoints."""
    if RECORD_KEY not in checkpoint and adapter_configs(module):
        checkpoint[RECORD_KEY] = _record(module, [], fingerprint([]))


def complete_checkpoint(module: nn.Module, checkpoint: dict[str, Any], where: str = "The checkpoint") -> None:
    """Make a checkpoint that :class:`TrainableOnlySession` wrote whole again, for ``module`` to load.

    Injects the adapters the checkpoint names that ``module`` lacks, checks that ``module``'s own
    weights for the left-out names have the saved fingerprint, and copies them into the checkpoint's
    state dict. Does nothing for other checkpoints, or twice. Call it from a LightningModule's
    ``on_load_checkpoint`` so that ``load_from_checkpoint`` reads these files too.

    Raises:
        FrozenWeightsError: ``module`` lacks the left-out weights or holds other ones.
        AdapterError: ``module`` carries other adapters than the checkpoint's.
    """
    record = checkpoint.get(RECORD_KEY)
    state = checkpoint.get("state_dict")
    if not isinstance(record, dict) or record.get("completed") or not isinstance(state, dict):
        return
    rebuild_adapters(module, record.get("adapters") or {}, where)
    frozen = list(record.get("frozen") or [])
    if frozen:
        own = module.state_dict()
        missing = [name for name in frozen if name not in own]
        if missing:
            raise FrozenWeightsError(
                f"{where} leaves out frozen weights that {type(module).__name__} does not have "
                f"({', '.join(missing[:_SHOWN])}{' ...' if len(missing) > _SHOWN else ''}): it was written for "
                f"another model ({record.get('source')}). Load it into that model."
            )
        found = fingerprint((name, own[name]) for name in frozen)
        if found != record.get("fingerprint"):
            raise FrozenWeightsError(
                f"{where} keeps only the weights that trained, and was trained on frozen weights with fingerprint "
                f"{record.get('fingerprint')} (source: {record.get('source')}). The model it is loaded into has "
                f"other frozen weights, fingerprint {found} (source: {describe_source(module)}). Build the model "
                "from the same pretrained weights (random ones, as pretrained=False gives, differ on every build) "
                "or load a full checkpoint (save_trainable_only=False)."
            )
        for name in frozen:
            state[name] = own[name]
    record["completed"] = True


def complete_on_load(module: LightningModule) -> Callable[[], None]:
    """Make ``module.on_load_checkpoint`` run :func:`complete_checkpoint` first; return the undo."""
    original = module.on_load_checkpoint

    @functools.wraps(original)
    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        complete_checkpoint(module, checkpoint)
        original(checkpoint)

    module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def undo() -> None:
        if vars(module).get("on_load_checkpoint") is on_load_checkpoint:
            del module.on_load_checkpoint

    return undo


def load_from_checkpoint(cls: type[M], checkpoint_path: str | Path | IO[bytes], **kwargs: Any) -> M:
    """``cls.load_from_checkpoint(checkpoint_path, **kwargs)`` that also reads a checkpoint which keeps
    only what trained, for any LightningModule: it runs :func:`complete_checkpoint` before the module's
    own ``on_load_checkpoint``. Lightning's own ``load_from_checkpoint`` of a module that does not call
    :func:`complete_checkpoint` fails on such a file with torch's "Missing key(s) in state_dict"."""
    own = cls.__dict__.get("on_load_checkpoint")
    original = cls.on_load_checkpoint
    where = f"Checkpoint {checkpoint_path}" if isinstance(checkpoint_path, str | Path) else "The checkpoint"

    def on_load_checkpoint(self: LightningModule, checkpoint: dict[str, Any]) -> None:
        complete_checkpoint(self, checkpoint, where)
        original(self, checkpoint)

    cls.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign,assignment]
    try:
        loaded = cls.load_from_checkpoint(checkpoint_path, **kwargs)
    finally:
        if own is None:
            del cls.on_load_checkpoint
        else:
            cls.on_load_checkpoint = own  # type: ignore[method-assign]
    return loaded
