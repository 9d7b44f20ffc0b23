"""The weights a fine-tuning run starts from: the pretrained modules as they were when the fit started.

Three recipes use the distance to them: L2-SP pulls the weights back toward them
(:mod:`~finetune_strategies.core.l2_sp`), WiSE-FT interpolates between them and the fine-tuned
weights (:mod:`~finetune_strategies.recipes.wise_ft`), and the drift monitor reports the distance per layer
(:mod:`~finetune_strategies.recipes.drift`). :class:`StartWeights` is the copy each of them keeps:

* taken at ``on_fit_start``, after DDP made every rank's weights rank 0's;
* written into the checkpoint by its owner's ``state_dict`` and read back by ``load_state_dict``, which
  Lightning calls before ``on_fit_start`` on a resume, so a resumed run keeps the weights of the first
  start, never the resumed ones;
* one copy of the pretrained modules' parameters (and, for WiSE-FT, their floating-point buffers),
  on the parameters' device: :attr:`StartWeights.nbytes` says how much;
* under FSDP2, this rank's shard of each, like the parameters: gathered whole for the checkpoint that
  rank 0 writes, and cut back to each rank's shard when a resumed run uses it.

The pretrained modules are the ones the trainer's fine-tuning strategy freezes (its
``find_modules_to_freeze``, so ``attr_names`` or the model's ``modules_to_freeze()``), also under
``no_freeze``, which freezes nothing but still names its backbone; without a strategy, ``attr_names``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from finetune_strategies.core import distributed
from finetune_strategies.errors import ConfigurationError, MissingModuleError
from finetune_strategies.model.roots import FrozenModules, find_frozen


def pretrained_modules(
    trainer: pl.Trainer | None, pl_module: pl.LightningModule, attr_names: Sequence[str] | None = None
) -> FrozenModules:
    """The pretrained modules of ``pl_module``: ``attr_names`` if given, else what the trainer's
    fine-tuning strategy freezes, else what a strategy would (:func:`~finetune_strategies.model.roots.find_frozen`)."""
    frozen: FrozenModules | None = None
    if attr_names is None and trainer is not None:
        strategies = [c for c in trainer.callbacks if isinstance(c, BaseFinetuning)]  # type: ignore[attr-defined]
        ours = getattr(strategies[0], "find_frozen", None) if strategies else None
        flash = getattr(strategies[0], "find_modules_to_freeze", None) if strategies else None
        if callable(ours):
            frozen = ours(pl_module)
        elif callable(flash):
            frozen = FrozenModules(tuple(flash(pl_module)), found_by=type(strategies[0]).__name__)
    if frozen is None:
        frozen = find_frozen(pl_module, attr_names)
    if frozen is None or not frozen.roots:
        raise MissingModuleError(
            f"{type(pl_module).__name__} names no pretrained module (modules_to_freeze() returned None), so there "
            "are no start weights to compare with. Name them with attr_names=[...]."
        )
    return frozen


def pretrained_roots(
    trainer: pl.Trainer | None, pl_module: pl.LightningModule, attr_names: Sequence[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the pretrained modules (:func:`pretrained_modules`), 0.1's form."""
    return list(pretrained_modules(trainer, pl_module, attr_names).roots)


class StartWeights:
    """A copy of the pretrained modules' weights, keyed by their names in the LightningModule.

    Args:
        buffers: Also copy floating-point buffers (BatchNorm running statistics).
    """

    def __init__(self, *, buffers: bool = False) -> None:
        self.buffers = buffers
        self.tensors: dict[str, torch.Tensor] = {}

    @property
    def taken(self) -> bool:
        """Whether the copy holds weights (taken at a fit's start, or loaded from a checkpoint)."""
        return bool(self.tensors)

    @property
    def nbytes(self) -> int:
        """The memory the copy takes (on this rank: under FSDP2, its shards)."""
        local = (t.to_local() if distributed.is_shard(t) else t for t in self.tensors.values())  # type: ignore[attr-defined]
        return sum(t.numel() * t.element_size() for t in local)

    def take(self, pl_module: nn.Module, pretrained: FrozenModules, owner: str, *, resumed: bool = False) -> None:
        """Copy the pretrained modules' weights now (a head inside them left out), unless a checkpoint's
        copy was loaded. A ``resumed`` fit whose
        checkpoint had no copy (written without ``owner``) takes the resumed weights, with a warning."""
        if self.taken:
            self.check_matches(pl_module, pretrained, owner)
            return
        if resumed:
            rank_zero_warn(
                f"{owner}: the checkpoint this fit resumes from holds no start weights (it was written without "
                f"{owner}), so the weights it resumes with count as the start weights."
            )
        with torch.no_grad():
            self.tensors = {name: tensor.detach().clone() for name, tensor in self.live(pl_module, pretrained)}

    def live(self, pl_module: nn.Module, pretrained: FrozenModules) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of the pretrained modules' current parameters (and floating-point buffers),
        by their names in ``pl_module``."""
        params = {id(p) for p in pretrained.parameters()}
        yield from ((n, p) for n, p in pl_module.named_parameters() if id(p) in params)
        if self.buffers:
            owned = {id(b) for m in pretrained.buffers() for b in m.buffers(recurse=False)}
            yield from ((n, b) for n, b in pl_module.named_buffers() if id(b) in owned and b.is_floating_point())

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The start value of ``name`` in ``like``'s form: on its device (a checkpoint's copy arrives on the
        CPU), and this rank's shard where ``like`` is an FSDP2 shard (a checkpoint's copy is whole)."""
        start = self.tensors[name]
        if start.device != like.device or distributed.is_shard(start) != distributed.is_shard(like):
            start = self.tensors[name] = distributed.like(start.to(like.device), like)
        return start

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The copy, with FSDP2 shards gathered whole (a collective: every rank calls it)."""
        return distributed.whole(self.tensors) or {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor] | None, owner: str) -> None:
        """Take a checkpoint's copy; an empty or missing one leaves the copy to be taken at the fit's start."""
        if not state:
            return
        bad = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise ConfigurationError(f"{owner}: the checkpoint's start weights hold non-tensors for {bad[:3]}.")
        self.tensors = dict(state)

    def check_matches(self, pl_module: nn.Module, pretrained: FrozenModules, owner: str) -> None:
        """Raise if the copy does not have the model's pretrained weights (names and shapes): a checkpoint
        of another model."""
        live = dict(self.live(pl_module, pretrained))
        missing = sorted(set(live) - set(self.tensors))
        shapes = [n for n, t in live.items() if n in self.tensors and self.tensors[n].shape != t.shape]
        if missing or shapes:
            raise ConfigurationError(
                f"{owner}: the start weights in the checkpoint do not fit this model's pretrained modules "
                f"(missing {missing[:3]}, other shapes {shapes[:3]}). Resume with the model that wrote the checkpoint."
            )
