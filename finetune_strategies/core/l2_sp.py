"""L2-SP: keep the fine-tuned weights close to the pretrained ones (Li, Grandvalet and Davoine, ICML 2018).

The penalty is ``alpha / 2 * ||w - w0||^2`` over the pretrained modules' parameters that train, with
``w0`` their weights when the fit started, plus, with ``beta``, ``beta / 2 * ||w||^2`` over the other
parameters that train (the head; plain L2). Its gradient, ``alpha * (w - w0)`` and ``beta * w``, is
added to the parameters' gradients in ``on_before_optimizer_step``: no second forward pass, and the same
result as adding the penalty to the loss. That hook runs after DDP's all-reduce, on every rank with the
same weights, so the ranks stay identical; it also runs after AMP's unscaling and before gradient
clipping, once per optimizer step (with gradient accumulation too).

Memory: one copy of the pretrained modules' parameters, on their device, also written into checkpoints
so that a resumed run pulls toward the same ``w0``.

Under FSDP2 each rank holds a shard of every parameter, of its gradient (already reduce-scattered when
the hook runs) and of ``w0``: the penalty is elementwise, so each rank adds it to its shard and the
result is the same math. Refused at setup under DeepSpeed, which steps its own fp32 copies of the
parameters (the penalty would miss the update), and under FSDP1, whose flattened shards it is not
verified against.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer

from finetune_strategies.core import distributed
from finetune_strategies.core.start_weights import StartWeights
from finetune_strategies.errors import StrategySpecError
from finetune_strategies.model.roots import FrozenModules
from finetune_strategies.validation import check_positive_float


class L2SP:
    """The L2-SP penalty of one fit (see the module docstring). Inactive when ``alpha`` is None."""

    def __init__(self, alpha: float | None, beta: float | None) -> None:
        self.alpha = None if alpha is None else check_positive_float("l2_sp", alpha)
        self.beta = None if beta is None else check_positive_float("l2_sp_beta", beta)
        if self.alpha is None and self.beta is not None:
            raise StrategySpecError(
                "l2_sp_beta (plain L2 on the head) is part of L2-SP: give l2_sp (the pull toward the pretrained "
                "weights, e.g. l2_sp=0.01) too, or use the optimizer's weight_decay."
            )
        self.start = StartWeights()
        self._names: dict[int, str] = {}  # id(parameter) -> name, for the pretrained parameters
        self._head: set[int] = set()

    @property
    def active(self) -> bool:
        return self.alpha is not None

    def check(self, trainer: pl.Trainer, owner: str) -> None:
        """Refuse the engines whose optimizer steps gradients the hook does not see (FSDP1, DeepSpeed)."""
        if not self.active:
            return
        reasons = {
            "deepspeed": "DeepSpeed steps its own fp32 copies of the parameters, so the penalty would miss the update.",
            "fsdp1": "FSDP1 holds flattened pieces of parameters on each rank, which L2-SP is not verified against.",
        }
        distributed.refuse_each(
            trainer,
            f"{owner} with l2_sp",
            "L2-SP adds alpha * (w - w0) to the gradients before each optimizer step",
            reasons,
            "Train with DDP, FSDP2 (ModelParallelStrategy with fully_shard) or one device, or remove l2_sp.",
        )

    def begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule, frozen: FrozenModules) -> None:
        """At the fit's start: copy ``w0`` (unless a checkpoint brought it) and sort the parameters."""
        self.start.take(pl_module, frozen, "l2_sp", resumed=trainer.ckpt_path is not None)
        pretrained = {id(p) for p in frozen.parameters()}
        self._names = {id(p): n for n, p in pl_module.named_parameters() if id(p) in pretrained}
        self._head = {id(p) for p in pl_module.parameters() if id(p) not in pretrained}
        count = sum(t.numel() for t in self.start.tensors.values())
        rank_zero_info(
            f"L2-SP keeps a copy of the pretrained weights at the fit's start "
            f"({count:,} parameters, {self.start.nbytes / 2**20:.1f} MiB)."
        )

    def apply(self, optimizer: Optimizer) -> None:
        """Add the penalty's gradient to the gradients of the parameters ``optimizer`` is about to step."""
        if self.alpha is None:
            return
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if not param.requires_grad:
                        continue
                    name = self._names.get(id(param))
                    if name is not None:
                        _add_grad(param, param - self.start.get(name, param), self.alpha)
                    elif self.beta is not None and id(param) in self._head:
                        _add_grad(param, param, self.beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.start.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor] | None, owner: str) -> None:
        self.start.load_state_dict(state, owner)


def _add_grad(param: nn.Parameter, direction: torch.Tensor, scale: float) -> None:
    """``param.grad += scale * direction``; a parameter without a gradient gets the penalty's alone."""
    if param.grad is None:
        param.grad = direction.mul(scale)
    else:
        param.grad.add_(direction, alpha=scale)
