"""What each distributed engine needs so that a strategy trains exactly the parameters it unfroze.

Engines (see docs/distributed.md for what is tested where):

* **DDP** decides which parameters it all-reduces once, when it wraps the model: those with
  ``requires_grad=True`` at that moment. Fine-tuning strategies freeze the backbone before the wrap,
  so a backbone unfrozen later would train on each rank's local gradients only and the ranks drift
  apart (Lightning issue #20340). :func:`sync_ddp` rebuilds the wrapper whenever the trainable set
  differs from what the current wrapper registered, through the same Lightning strategy with the same
  options; the old wrapper's autograd hooks are removed first. It costs one broadcast of the model
  from rank 0 per phase change; the steps after it run at plain DDP speed.
* **FSDP2** (``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``) shards every
  parameter as a DTensor that keeps its module, name and ``requires_grad``. Each backward
  reduce-scatters the gradients of the parameters that require grad *at that backward*, so an
  unfrozen parameter is reduced from its first step on, and a frozen one has no gradient and no
  optimizer state: :func:`sync_ddp` has nothing to do. ``fully_shard`` replaces the parameters the
  strategy saw in ``setup``, so the strategy plans its param groups again when the optimizer is built.
* **FSDP1** (``FSDPStrategy``) needs ``use_orig_params=True`` (:func:`check_engine`): then frozen and
  trainable parameters may share an FSDP unit, and FSDP recomputes each unit's ``requires_grad`` before
  every forward, so unfreezing works as under FSDP2.
* **DeepSpeed** cannot add param groups to its optimizer: only strategies with pre-registered groups
  (``*_deepspeed``) run, at every ZeRO stage.

FSDP and DeepSpeed load optimizer states inside their own ``load_checkpoint``, after the optimizer is
built and before callbacks get their state back, so Lightning's ``BaseFinetuning`` cannot rebuild the
param groups that phases added before that load: the strategy does it in a hook that
:func:`before_checkpoint_load` runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch 2.1-2.3 (no FSDP2 there): the same classes under their early name
    from torch.distributed._tensor import DTensor, distribute_tensor  # type: ignore[attr-defined]
from torch.nn.parallel import DistributedDataParallel

from finetune_strategies import _lightning
from finetune_strategies.checkpointing.checkpoint_io import TRUST_HINT
from finetune_strategies.checkpointing.weights import torch_load
from finetune_strategies.errors import CheckpointError, ConfigurationError

# The parameters (by id) each DDP module registered with its reducer, as far as we know.
_registered: weakref.WeakKeyDictionary[DistributedDataParallel, frozenset[int]] = weakref.WeakKeyDictionary()


def trainable_parameter_ids(ddp: DistributedDataParallel) -> frozenset[int]:
    """Ids of the parameters that ``ddp`` would register if it were built now."""
    ignored = ddp.parameters_to_ignore
    return frozenset(id(p) for name, p in ddp.module.named_parameters() if p.requires_grad and name not in ignored)


def sync_ddp(trainer: pl.Trainer, *, stale: bool = False) -> bool:
    """Re-wrap the DDP module of ``trainer`` if its trainable parameters changed since it was built.

    Call this right after anything that changes ``requires_grad`` during ``fit``. The first call
    for a DDP module records what it registered, which is what is trainable now unless ``stale``
    says that parameters were already unfrozen after the wrap (a resume replaying its unfreezes).
    Returns whether a new DDP module was built. Does nothing outside DDP.
    """
    strategy = trainer.strategy
    ddp = strategy.model
    if not isinstance(ddp, DistributedDataParallel):
        return False
    now = trainable_parameter_ids(ddp)
    known = _registered.get(ddp)
    if known is None and not stale:
        _registered[ddp] = now
        return False
    if known == now:
        return False
    if not isinstance(strategy, DDPStrategy):
        raise ConfigurationError(
            f"The trainable parameters changed under {type(strategy).__name__}, which wraps the model in "
            "DistributedDataParallel but cannot rebuild the wrapper. Use strategy='ddp' (or 'ddp_spawn', "
            "'ddp_find_unused_parameters_true') so that unfrozen parameters are all-reduced."
        )
    rewrap(strategy, ddp)
    return True


def rewrap(strategy: DDPStrategy, ddp: DistributedDataParallel) -> DistributedDataParallel:
    """Replace ``ddp`` on ``strategy`` by a new DDP module over the same LightningModule."""
    if not any(p.requires_grad for p in ddp.module.parameters()):
        raise ConfigurationError(
            "Nothing is trainable: DistributedDataParallel needs at least one trainable parameter."
        )
    _lightning.detach_ddp(ddp)
    _registered.pop(ddp, None)
    new = _lightning.rebuild_ddp(strategy, ddp.module)
    _registered[new] = trainable_parameter_ids(new)
    return new


# ------------------------------------------------------------------ which engine, and what it supports
def engine_of(trainer: pl.Trainer) -> str:
    """The engine that shards or replicates the model: ``"deepspeed"`` (with its ZeRO stage), ``"fsdp2"``,
    ``"fsdp1"``, ``"ddp"`` or ``"single"`` (one process, or a strategy this module does not know)."""
    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        zero = (strategy.config or {}).get("zero_optimization") or {}
        return f"deepspeed ZeRO-{zero.get('stage', 0)}"
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    if isinstance(strategy, FSDPStrategy):
        return "fsdp1"
    if isinstance(strategy, DDPStrategy):
        return "ddp"
    return "single"


def check_engine(
    trainer: pl.Trainer,
    owner: str,
    *,
    preregister: bool,
    restore_best: bool,
    cache_features: bool,
    per_phase: list[str],
) -> None:
    """Raise, before anything trains, for a combination of engine and strategy options that could not
    train the parameters the schedule names (``per_phase``: phases with their own LR scheduler or an
    optimizer-state reset; ``restore_best``: a plateau trigger puts the best weights back)."""
    engine = engine_of(trainer)
    if engine.startswith("deepspeed"):
        if not preregister:
            raise ConfigurationError(
                f"{owner} adds optimizer param groups during training, which DeepSpeed does not allow. Use the "
                "`*_deepspeed` strategy of the same name (or pass preregister_groups=True)."
            )
        if per_phase:
            raise ConfigurationError(
                f"Phase(s) {per_phase} bring their own LR scheduler or reset the optimizer state, which "
                "DeepSpeed's engine does not let a callback do. Remove those phase options, or train without "
                "DeepSpeed."
            )
        if cache_features:
            raise ConfigurationError(
                f"{owner} has cache_features=True, which needs the frozen modules' parameters to require no grad, "
                f"but under {engine} the parameters of pending phases keep requires_grad=True (DeepSpeed's optimizer "
                "only takes parameters that require grad when it is built; their gradients are zeroed until their "
                "phase starts). Pass cache_features=False, or train with DDP or FSDP."
            )
        if restore_best:
            raise ConfigurationError(
                f"{owner} puts a plateaued stage's best weights back (restore_best=True), but under {engine} the "
                "ZeRO optimizer keeps its own fp32 copy of every parameter and writes it over the model at the "
                "next step, so training would go on from the last weights instead. Pass restore_best=False, or "
                "train with DDP or FSDP."
            )
    if engine == "fsdp1" and not trainer.strategy.kwargs.get("use_orig_params", False):  # type: ignore[attr-defined]
        raise ConfigurationError(
            f"{owner} changes requires_grad during training, but FSDPStrategy(use_orig_params=False) flattens "
            "each FSDP unit into one FlatParameter with one requires_grad, and its optimizer sees only the "
            "FlatParameters. Use FSDPStrategy(use_orig_params=True) (Lightning's default) or FSDP2 "
            "(ModelParallelStrategy with fully_shard)."
        )
    if engine == "fsdp1" and restore_best:
        raise ConfigurationError(
            f"{owner} keeps a plateaued stage's best weights to put back (restore_best=True), but under FSDP1 each "
            "rank holds a flat shard of them that rank 0's checkpoint cannot hold for the other ranks. Pass "
            "restore_best=False, or use FSDP2 (ModelParallelStrategy with fully_shard), where it works."
        )


SHARDED = ("fsdp1", "fsdp2", "deepspeed")
"""Engines that partition weights across ranks (FSDP, ZeRO-3) or train their own copies of them (ZeRO-1/2)."""


def refuse_engines(trainer: pl.Trainer, owner: str, why: str, fix: str, engines: tuple[str, ...] = SHARDED) -> None:
    """Raise, before anything trains, if ``trainer`` runs one of ``engines`` (see :func:`engine_of`)."""
    engine = engine_of(trainer)
    if engine.startswith(engines):
        raise ConfigurationError(
            f"{owner} is not supported under {engine} ({type(trainer.strategy).__name__}): {why} {fix}"
        )


def refuse_each(trainer: pl.Trainer, owner: str, does: str, reasons: Mapping[str, str], fix: str) -> None:
    """:func:`refuse_engines` for each engine of ``reasons``: what ``owner`` does, and why the engine defeats it."""
    for engine, why in reasons.items():
        refuse_engines(trainer, owner, f"{does}, but {why}", fix, engines=(engine,))


def check_reduced(trainer: pl.Trainer, planned: Mapping[str, nn.Parameter]) -> None:
    """Under FSDP2, raise if a parameter that a phase will train (``planned``, by name) is not a DTensor:
    neither ``fully_shard`` nor ``parallelize_module`` took it in ``configure_model``, so no collective
    would reduce its gradient and each rank would train its own copy."""
    if not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    plain = [name for name, param in planned.items() if not isinstance(param, DTensor)]
    if plain:
        raise ConfigurationError(
            f"Under ModelParallelStrategy, {len(plain)} parameter(s) that the schedule trains are not sharded "
            f"(e.g. {plain[0]}): configure_model applied neither fully_shard nor parallelize_module to the "
            "module that holds them, so their gradients would not be reduced across ranks and each rank would "
            "train its own copy. Apply fully_shard to those modules (or to the whole model) in configure_model."
        )


# ------------------------------------------------------------------ modules and tensors across engines
def submodule(pl_module: nn.Module, name: str) -> nn.Module:
    """The module named ``name`` when the strategy was set up; under FSDP1 the module inside its wrapper."""
    module = pl_module.get_submodule(name)
    return module.module if isinstance(module, FullyShardedDataParallel) else module


def is_shard(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is an FSDP2 (or tensor-parallel) shard, a DTensor."""
    return isinstance(tensor, DTensor)


def numel(param: torch.Tensor) -> int:
    """The elements of the whole parameter: a DTensor counts its global shape, a ZeRO-3 partitioned
    parameter (empty outside its forward) its ``ds_numel``."""
    return int(getattr(param, "ds_numel", param.numel()))


def whole(tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """``tensors`` with every DTensor (an FSDP2 shard) gathered whole, to save in a checkpoint that one rank
    writes. Gathering is a collective: every rank calls it, as it calls ``state_dict``."""
    if tensors is None:
        return None
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in tensors.items()}


def like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``value`` in the form of ``target``: this rank's shard of a whole tensor when ``target`` is a DTensor
    (each rank cuts its own shard, without communication)."""
    if isinstance(target, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    return value


# ------------------------------------------------------------------ resume under FSDP and DeepSpeed
def read_callback_state(path: str | Path, state_key: str, *, weights_only: bool | None = None) -> dict[str, Any] | None:
    """The state a callback saved in the checkpoint at ``path`` (a file, or a sharded checkpoint folder
    whose metadata file holds it); None if there is none (e.g. a DeepSpeed folder). Read with
    ``weights_only=True`` unless ``weights_only=False`` (the fit's own choice) allows unpickling."""
    file = Path(path)
    if file.is_dir():
        file = file / _lightning.sharded_metadata_file()
        if not file.is_file():
            return None
    checkpoint = torch_load(
        file, str(file), weights_only=weights_only is not False, error=CheckpointError, opt_in=TRUST_HINT
    )
    state = checkpoint.get("callbacks", {}).get(state_key)
    return dict(state) if isinstance(state, Mapping) else None


def before_checkpoint_load(trainer: pl.Trainer, hook: Callable[[Any, bool | None], None]) -> None:
    """Run ``hook(checkpoint_path, weights_only)`` right before the strategy loads a checkpoint, under
    strategies that load optimizer states in ``load_checkpoint`` after building the optimizer and before
    callbacks get their state back (FSDP1, FSDP2, DeepSpeed). Lightning's ``BaseFinetuning`` rebuilds the
    param groups that phases added in ``on_fit_start``, which runs before that load under these strategies
    and knows nothing yet; without a rebuild before the load, the load drops the optimizer state of those
    groups and their parameters get gradients but are never stepped. Undone by :func:`remove_load_hook`."""
    strategy = trainer.strategy
    if not strategy.restore_checkpoint_after_setup or "load_checkpoint" in vars(strategy):
        return
    original: Callable[..., Any] = strategy.load_checkpoint

    def load_checkpoint(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        hook(checkpoint_path, kwargs.get("weights_only", args[0] if args else None))
        return original(checkpoint_path, *args, **kwargs)

    strategy.load_checkpoint = load_checkpoint  # type: ignore[method-assign]


def remove_load_hook(trainer: pl.Trainer) -> None:
    """Undo :func:`before_checkpoint_load`."""
    vars(trainer.strategy).pop("load_checkpoint", None)
