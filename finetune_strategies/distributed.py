"""Keep ``DistributedDataParallel`` in step with the parameters a strategy unfreezes.

DDP decides which parameters it all-reduces once, when it wraps the model: those with
``requires_grad=True`` at that moment. Fine-tuning strategies freeze the backbone before the wrap,
so a backbone unfrozen later trains on each rank's local gradients only and the ranks drift apart
(Lightning issue #20340).

The fix here: whenever the set of trainable parameters differs from the set the current DDP module
registered, wrap the LightningModule in a new DDP module built by the same strategy, with the same
options (``find_unused_parameters``, ``static_graph``, bucket sizes, communication hooks). The old
module's autograd hooks are removed first so that it can never reduce a gradient again. Rebuilding
costs one broadcast of the model from rank 0 per phase change; the steps after it run at plain DDP
speed, with gradient communication overlapped with the backward pass (see docs/distributed.md for
the measurements behind this choice).
"""

from __future__ import annotations

import weakref

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from finetune_strategies import _lightning
from finetune_strategies.errors import ConfigurationError

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
