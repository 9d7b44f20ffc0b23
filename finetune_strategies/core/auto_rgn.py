"""Auto-RGN: every layer's learning rate scaled, every optimizer step, by its relative gradient norm
(Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023).

A layer is a param group. With ``layer_lr="auto_rgn"`` every phase puts each backbone layer (in the
strategy's ``layer_unit``) in a group of its own, as ``layer_lr_decay`` does (with factor 1 when no
decay is given), and ``no_freeze`` regroups the backbone per layer when the optimizer is built; each of
the optimizer's own groups (the head, from ``configure_optimizers``) counts as one layer.

Before each optimizer step, for every group with at least one gradient, over its parameters that have
one: ``RGN = sqrt(sum ||g||^2) / max(sqrt(sum ||w||^2), eps)``, and the group trains at
``scheduled lr * RGN / max RGN``, so the group with the largest relative gradient gets its full lr.
Groups without gradients (frozen, pending) keep their lr. The hook runs in ``on_before_optimizer_step``:
after DDP's all-reduce, AMP's unscaling and L2-SP's gradient, before gradient clipping, once per step
(with gradient accumulation, on the stepping batch). A step post-hook on the optimizer puts the
scheduled lrs back right after the step, so LR schedulers, ``LearningRateMonitor``, the strategy's own
lr logic and checkpoints only ever see the scheduled lrs. A step whose gradients hold inf or NaN (AMP's
``GradScaler`` skips it) is not scaled; a step where every gradient is zero neither.

Across ranks the per-group squared norms are summed once per step: a replicated tensor (DDP) adds its
square divided by the world size (the ranks' mean), an FSDP2 shard (a DTensor) its local square divided
by its replication, so every rank applies the same lrs. Refused under DeepSpeed, whose gradients live in
its partitioned buffers (``p.grad`` is None), and under FSDP1, whose flat shards it is not verified against.

Resume is exact: the scaling depends only on the current gradients and weights, and the lrs the optimizer
state holds are the scheduled ones.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal, get_args

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from finetune_strategies.core import distributed
from finetune_strategies.errors import StrategySpecError

LayerLr = Literal["auto_rgn"]
"""The per-layer learning-rate rules ``layer_lr`` takes."""
LAYER_LRS: Final[tuple[str, ...]] = get_args(LayerLr)
EPS: Final = 1e-12
"""The least weight norm a group's RGN divides by."""


def check_layer_lr(value: Any) -> LayerLr | None:
    """``value`` if it is ``None`` or one of :data:`LAYER_LRS`; else a :class:`StrategySpecError`."""
    if value is None or value in LAYER_LRS:
        return value  # type: ignore[no-any-return]
    expected = ", ".join(repr(v) for v in LAYER_LRS)
    raise StrategySpecError(f"`layer_lr` must be None or one of {expected}, got {value!r} ({type(value).__name__}).")


class AutoRGN:
    """Auto-RGN in one fit (see the module docstring). Inactive when ``mode`` is None."""

    def __init__(self, mode: LayerLr | None) -> None:
        self.mode = check_layer_lr(mode)
        self._scheduled: dict[int, tuple[Optimizer, list[Any]]] = {}  # id(optimizer) -> it, lrs before scaling
        self._hooks: dict[int, RemovableHandle] = {}
        self._ratios: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.mode is not None

    @property
    def ratios(self) -> dict[str, float]:
        """The last step's ``lr / scheduled lr`` of every group with gradients, by group name."""
        return dict(self._ratios)

    def check(self, trainer: pl.Trainer, owner: str) -> None:
        """Refuse the engines whose gradients the hook cannot see whole (DeepSpeed, FSDP1)."""
        if not self.active:
            return
        reasons = {
            "deepspeed": "DeepSpeed keeps the gradients in its own partitioned buffers (p.grad is None), so the "
            "relative gradient norms cannot be measured.",
            "fsdp1": "FSDP1 holds flattened pieces of parameters on each rank, which Auto-RGN is not verified against.",
        }
        distributed.refuse_each(
            trainer,
            f'{owner} with layer_lr="auto_rgn"',
            "Auto-RGN scales each param group's lr by its gradient norm before every step",
            reasons,
            "Train with DDP, FSDP2 (ModelParallelStrategy with fully_shard) or one device, or remove layer_lr.",
        )

    def apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Scale the lr of every group of ``optimizer`` that has gradients, for its coming step; log the ratios."""
        if not self.active:
            return
        self.restore(optimizer)  # a step that did not run (skipped by AMP's GradScaler) left its lrs scaled
        groups = [(i, g) for i, g in enumerate(optimizer.param_groups) if any(p.grad is not None for p in g["params"])]
        if not groups:
            return
        squares = _squared_norms(trainer, [g["params"] for _, g in groups])
        rgns = [math.sqrt(grad) / max(math.sqrt(weight), EPS) for grad, weight in squares]
        top = max(rgns)
        if not all(math.isfinite(r) for r in rgns) or top == 0.0:
            return
        self._scheduled[id(optimizer)] = (optimizer, [g["lr"] for g in optimizer.param_groups])
        if id(optimizer) not in self._hooks:
            self._hooks[id(optimizer)] = optimizer.register_step_post_hook(self._after_step)
        prefix = _optimizer_prefix(trainer, optimizer)
        ratios = {}
        for (index, group), rgn in zip(groups, rgns, strict=True):
            ratio = rgn / top
            group["lr"] = group["lr"] * ratio
            ratios[f"{prefix}{group.get('name') or f'group {index}'}"] = ratio
        self._ratios = ratios
        pl_module.log_dict({f"auto_rgn/{name}": ratio for name, ratio in ratios.items()}, on_step=True, on_epoch=False)

    def restore(self, optimizer: Optimizer) -> None:
        """Put back the scheduled lrs of ``optimizer`` if they are scaled (the step post-hook calls it)."""
        entry = self._scheduled.pop(id(optimizer), None)
        if entry is not None:
            for group, lr in zip(optimizer.param_groups, entry[1], strict=False):
                group["lr"] = lr

    def restore_all(self) -> None:
        for optimizer, _ in list(self._scheduled.values()):
            self.restore(optimizer)

    def end(self) -> None:
        """At the fit's end: the scheduled lrs back and the optimizers' hooks removed."""
        self.restore_all()
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.restore(optimizer)


def _squared_norms(trainer: pl.Trainer, groups: list[list[torch.Tensor]]) -> list[tuple[float, float]]:
    """Per group, ``(sum ||g||^2, sum ||w||^2)`` over its parameters with a gradient, summed over every rank's
    share (see the module docstring): one collective for all groups."""
    world = trainer.world_size
    device = trainer.strategy.root_device
    rows = []
    for params in groups:
        grad_sq = torch.zeros((), dtype=torch.float32, device=device)
        weight_sq = torch.zeros((), dtype=torch.float32, device=device)
        for param in params:
            if param.grad is None:
                continue
            share = _replicas(param, world)
            grad_sq += _local_square(param.grad).to(device) / share
            weight_sq += _local_square(param).to(device) / share
        rows.append(torch.stack([grad_sq, weight_sq]))
    sums = torch.stack(rows)
    if world > 1:
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
    return [(float(g), float(w)) for g, w in sums.tolist()]


def _local_square(tensor: torch.Tensor) -> torch.Tensor:
    """The squared norm of this rank's part of ``tensor`` (its shard when it is a DTensor), in float32."""
    local = tensor.detach()
    if distributed.is_shard(local):
        local = local.to_local()  # type: ignore[attr-defined]
    norm: torch.Tensor = torch.linalg.vector_norm(local, dtype=torch.float32)
    return norm.square()


def _replicas(param: torch.Tensor, world: int) -> int:
    """How many ranks hold the same values as this rank's part of ``param``: a plain tensor is replicated on
    every rank; a DTensor on the mesh dimensions where it is replicated."""
    if not distributed.is_shard(param):
        return world
    mesh, placements = param.device_mesh, param.placements  # type: ignore[attr-defined]
    return math.prod(mesh.size(dim) for dim, placement in enumerate(placements) if placement.is_replicate())


def _optimizer_prefix(trainer: pl.Trainer, optimizer: Optimizer) -> str:
    """``""`` for the first optimizer; ``"optimizer k, "`` for the others, so that their names stay apart."""
    index = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)
    return f"optimizer {index}, " if index else ""
