"""The param-group policy: which named param groups a phase brings, with which learning rates, and when.

Each phase puts the parameters it unfreezes in named param groups (:class:`GroupPlan`):

* one group, named after the phase (``backbone``, ``backbone.layer4.0, backbone.layer4.1``); or
* with ``layer_lr_decay``, one group per layer of the backbone (in the sense of ``layer_unit``),
  named after the layer, with lr ``phase_lr * layer_lr_decay ** k``, where ``k`` counts the layers
  between it and the top layer of the backbone (the top layer has ``k = 0``).

``phase_lr`` is the phase's ``lr``, else the strategy's ``lr``, else group 0's lr when the phase
starts divided by ``initial_denom_lr``. BatchNorm parameters that ``train_bn=True`` keeps trainable
in frozen modules are not moved: they train from the start in the optimizer's own groups.

:class:`ParamGroups` applies the plans. By default a phase's groups are added when it starts. With
``preregister=True`` (the ``*_deepspeed`` strategies, since DeepSpeed's optimizer cannot take new
groups) every group is added at lr 0 when the optimizer is built and a phase starts by setting its
lr. Parameters that already train when the optimizer is built (``no_freeze`` with
``layer_lr_decay``) get their groups then, moved out of the groups the model's
``configure_optimizers`` put them in, at that group's lr times the layer's factor.

A phase may bring an :class:`LrRamp`: its groups then start at group 0's lr times ``start_ratio``
(unless the phase has its own ``lr``), and at the start of every later epoch their lr is set to
``factor(epoch + 1)`` times the lr the ramp set the epoch before, capped at group 0's current lr
(times the layer factor) with ``align``. This is the rule of Lightning's ``BackboneFinetuning``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from finetune_strategies import _lightning
from finetune_strategies.core.lr_schedulers import follow_group_zero, schedulers_of, teach_schedulers
from finetune_strategies.errors import ScheduleError
from finetune_strategies.model.batchnorm import own_parameters
from finetune_strategies.model.layers import Layer


@dataclass(frozen=True)
class LrRamp:
    """How the lr of a phase's param groups moves after the phase starts (see the module docstring).

    Attributes:
        factor: Called at the start of every epoch after the phase's first with the epoch's number counted
            from 1 (``epoch + 1``, as Lightning's ``lambda_func``); returns the factor on the previous lr.
        align: Cap the lr at group 0's current lr (times the group's layer factor).
        start_ratio: The groups start at group 0's lr times this; ``None``: the strategy's rule
            (``lr``, else group 0's lr / ``initial_denom_lr``). A phase's own ``lr`` comes first.
    """

    factor: Callable[[int], float]
    align: bool = True
    start_ratio: float | None = None

    def next_lr(self, epoch: int, previous: float, cap: float) -> float:
        """The lr at the start of ``epoch`` after ``previous``; a factor that is not a number > 0 is refused."""
        factor = self.factor(epoch + 1)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
            raise ScheduleError(
                f"The lr ramp's factor ({getattr(self.factor, '__name__', self.factor)!r}) returned {factor!r} for "
                f"epoch {epoch} (called with {epoch + 1}); it must return a finite number > 0, the factor on the "
                "previous epoch's lr (e.g. 1.5)."
            )
        lr = float(factor) * previous
        return cap if self.align and lr > cap else lr


@dataclass(frozen=True)
class GroupPlan:
    """A param group that phase ``phase`` brings: its name, parameters, explicit lr, layer factor and
    lr ramp."""

    phase: int
    name: str
    params: tuple[nn.Parameter, ...]
    lr: float | None = None
    scale: float = 1.0
    ramp: LrRamp | None = None


def plan_phase_groups(
    phase: int,
    label: str,
    modules: Sequence[nn.Module],
    *,
    train_bn: bool,
    kept_trainable: set[int],
    lr: float | None,
    layer_lr_decay: float | None,
    layers: Sequence[Layer],
    name_params: Callable[[list[nn.Parameter]], str],
    ramp: LrRamp | None = None,
) -> list[GroupPlan]:
    """The groups of one phase that thaws ``modules`` (their own parameters); see the module docstring.

    ``layers`` are the backbone's layers, bottom to top, for ``layer_lr_decay``; a module in none of
    them counts as the top layer.
    """
    params = [p for p in own_parameters(modules, train_bn) if id(p) not in kept_trainable]
    if not params:
        return []
    if layer_lr_decay is None:
        return [GroupPlan(phase, label, tuple(params), lr, ramp=ramp)]
    layer_of = {id(m): index for index, layer in enumerate(layers) for m in layer.modules}
    top = len(layers) - 1
    pieces: dict[int, list[nn.Parameter]] = {}
    unplaced = {id(p): p for p in params}
    for module in modules:
        piece = pieces.setdefault(layer_of.get(id(module), top), [])
        piece.extend(unplaced.pop(id(p)) for p in module.parameters(recurse=False) if id(p) in unplaced)
    plans = []
    for index in sorted(pieces):
        piece = pieces[index]
        if not piece:
            continue
        whole = 0 <= index < len(layers) and {id(p) for p in own_parameters(layers[index].modules, train_bn)} - (
            kept_trainable
        ) == {id(p) for p in piece}
        name = layers[index].name if whole else name_params(piece)
        plans.append(GroupPlan(phase, name, tuple(piece), lr, layer_lr_decay ** max(top - index, 0), ramp))
    return plans


def plan_groups(
    phases: Sequence[Any],
    *,
    train_bn: bool,
    kept_trainable: set[int],
    lr: float | None,
    layer_lr_decay: float | None,
    layers: Callable[[], Sequence[Layer]],
    name_params: Callable[[list[nn.Parameter]], str],
) -> list[GroupPlan]:
    """The groups of every phase (:class:`~finetune_strategies.core.schedule.Phase`): a phase's own ``lr`` and
    ``layer_lr_decay`` override the strategy's; ``layers()`` lists the backbone's layers when decay needs them."""
    plans: list[GroupPlan] = []
    for index, phase in enumerate(phases):
        decay = phase.layer_lr_decay if phase.layer_lr_decay is not None else layer_lr_decay
        plans += plan_phase_groups(
            index,
            phase.label,
            phase.thawed_modules(),
            train_bn=train_bn,
            kept_trainable=kept_trainable,
            lr=phase.lr if phase.lr is not None else lr,
            layer_lr_decay=decay,
            layers=layers() if decay is not None else [],
            name_params=name_params,
            ramp=phase.lr_ramp,
        )
    return plans


def not_in_optimizer(optimizer: Optimizer, params: Iterable[Any]) -> list[Any]:
    """``params`` that ``optimizer`` does not hold yet, once each, compared by identity (not by value)."""
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    kept: list[Any] = []
    for param in params:
        if id(param) not in present:
            present.add(id(param))
            kept.append(param)
    return kept


def warn_already_present(count: int, frozen_before: int) -> None:
    """Say that ``count`` parameters passed for a new group were skipped because the optimizer has them."""
    rank_zero_warn(
        f"{count} parameter(s) to put in a new param group are already in the optimizer, so they were "
        f"skipped and keep their existing group's lr ({frozen_before} of them were frozen until now). "
        "To give unfrozen parameters their own group, build the optimizer from trainable parameters only, "
        "e.g. `torch.optim.AdamW(p for p in self.parameters() if p.requires_grad)`; and pass only frozen "
        "modules to unfreeze_and_add_param_group (with train_bn=True, BatchNorm layers of frozen modules "
        "already train and are in the optimizer: pass train_bn=False to leave them out)."
    )


def add_named_group(optimizer: Optimizer, params: list[Any], lr: float, name: str | None) -> int:
    """Add a param group (with a ``name`` unless None, made unique among the optimizer's); return its index."""
    group: dict[str, Any] = {"params": params, "lr": lr}
    if name is not None:
        taken = {g.get("name") for g in optimizer.param_groups}
        unique, count = name, 2
        while unique in taken:
            unique, count = f"{name} ({count})", count + 1
        group["name"] = unique
    optimizer.add_param_group(group)
    return len(optimizer.param_groups) - 1


@dataclass
class ParamGroups:
    """Applies the :class:`GroupPlan` of every phase to an optimizer (see the module docstring)."""

    plans: list[GroupPlan]
    preregister: bool
    initial_denom_lr: float
    pending: dict[int, int] = field(default_factory=dict)
    """Plan index -> param group index, for groups added at lr 0 before their phase starts."""
    masks: dict[int, list[RemovableHandle]] = field(default_factory=dict)
    """Phase -> gradient hooks that zero its pending parameters' gradients (DeepSpeed)."""
    ramped: dict[int, tuple[int, float, int]] = field(default_factory=dict)
    """Plan index -> (param group index, the lr its ramp set last, that epoch), for plans with an
    :class:`LrRamp` whose phase started. Part of the resume state."""

    def of_phase(self, phase: int) -> list[tuple[int, GroupPlan]]:
        return [(i, plan) for i, plan in enumerate(self.plans) if plan.phase == phase]

    def phase_lr(self, plan: GroupPlan, optimizer: Optimizer, reference: float | None = None) -> float:
        """The lr of ``plan``'s group, times its layer factor: its explicit lr, else ``reference``, else group
        0's lr times its ramp's ``start_ratio``, else group 0's lr / ``initial_denom_lr``."""
        if plan.lr is not None:
            base = plan.lr
        elif reference is not None:
            base = reference
        elif plan.ramp is not None and plan.ramp.start_ratio is not None:
            return float(optimizer.param_groups[0]["lr"] * plan.ramp.start_ratio * plan.scale)
        else:
            base = optimizer.param_groups[0]["lr"] / self.initial_denom_lr
        return base * plan.scale

    def build(self, optimizer: Optimizer, schedulers: list[Any]) -> set[int]:
        """Add the groups that exist from the start; return the phases that train from the start."""
        trains_from_start = set()
        for phase in sorted({plan.phase for plan in self.plans}):
            plans = self.of_phase(phase)
            if all(p.requires_grad for _, plan in plans for p in plan.params):
                for _, plan in plans:
                    self._regroup(optimizer, schedulers, plan)
                trains_from_start.add(phase)
            elif self.preregister:
                for index, plan in plans:
                    params = not_in_optimizer(optimizer, plan.params)
                    if params:
                        group = add_named_group(optimizer, params, 0.0, plan.name)
                        self.pending[index] = group
                        for scheduler in schedulers_of(schedulers, optimizer):
                            follow_group_zero(scheduler, optimizer, group, 0.0)
        return trains_from_start

    def _regroup(self, optimizer: Optimizer, schedulers: list[Any], plan: GroupPlan) -> None:
        moving = {id(p) for p in plan.params}
        origin = next((g for g in optimizer.param_groups if moving & {id(p) for p in g["params"]}), None)
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in moving]
        reference = (origin or optimizer.param_groups[0])["lr"]
        index = add_named_group(optimizer, list(plan.params), self.phase_lr(plan, optimizer, reference), plan.name)
        teach_schedulers(schedulers, optimizer, index, plan.scale)

    def gate(self, deepspeed: bool, started: set[int]) -> None:
        """Keep pending groups from training: ``requires_grad=False``, or under DeepSpeed (whose optimizer
        holds only parameters that require grad when it is built) zeroed gradients."""
        for index in self.pending:
            phase = self.plans[index].phase
            if phase in started:
                continue
            for param in self.plans[index].params:
                param.requires_grad = deepspeed
                if deepspeed:
                    hook = param.register_hook(torch.zeros_like)  # type: ignore[no-untyped-call]
                    self.masks.setdefault(phase, []).append(hook)

    def ungate(self, phase: int) -> None:
        for handle in self.masks.pop(phase, []):
            handle.remove()

    def start(
        self, phase: int, optimizer: Optimizer, schedulers: list[Any], frozen_before: set[int], epoch: int = 0
    ) -> None:
        """Give phase ``phase`` its groups at ``epoch``: set the lr of pending ones, add the others.

        ``frozen_before`` holds the ids of parameters that were frozen before this phase thawed them,
        for the message about parameters the optimizer already holds.
        """
        for index, plan in self.of_phase(phase):
            lr = self.phase_lr(plan, optimizer)
            group: int | None = None
            if index in self.pending:
                group = self.pending[index]
                optimizer.param_groups[group]["lr"] = lr
                teach_schedulers(schedulers, optimizer, group, 1.0 / self.initial_denom_lr)
            else:
                params = not_in_optimizer(optimizer, plan.params)
                added = {id(p) for p in params}
                skipped = [p for p in plan.params if id(p) not in added]
                if skipped:
                    warn_already_present(len(skipped), sum(id(p) in frozen_before for p in skipped))
                if params:
                    group = add_named_group(optimizer, params, lr, plan.name)
            if plan.ramp is not None and group is not None:
                self.ramped[index] = (group, lr, epoch)
        self.ungate(phase)

    def ramp(self, epoch: int, optimizer: Optimizer, schedulers: list[Any]) -> None:
        """Move the lr of every ramped group whose ramp has not moved it at ``epoch`` yet (see :class:`LrRamp`);
        every LR scheduler of the optimizer then drives the group at its new ratio to group 0."""
        for index, (group, previous, last) in sorted(self.ramped.items()):
            plan = self.plans[index]
            if epoch <= last or plan.ramp is None:
                continue
            lr = plan.ramp.next_lr(epoch, previous, optimizer.param_groups[0]["lr"] * plan.scale)
            optimizer.param_groups[group]["lr"] = lr
            teach_schedulers(schedulers, optimizer, group, 1.0 / self.initial_denom_lr)
            self.ramped[index] = (group, lr, epoch)

    def ramp_state(self) -> list[list[float]]:
        """:attr:`ramped` as plain data: ``[plan index, group index, lr, epoch]`` lists."""
        return [[index, group, lr, epoch] for index, (group, lr, epoch) in sorted(self.ramped.items())]

    def load_ramp_state(self, state: Sequence[Sequence[float]]) -> None:
        self.ramped = {int(index): (int(group), float(lr), int(epoch)) for index, group, lr, epoch in state}

    def remove_masks(self) -> None:
        for phase in list(self.masks):
            self.ungate(phase)


class OptimizerHook:
    """While installed, ``pl_module.configure_optimizers`` hands its optimizer and LR schedulers to
    ``on_built`` before Lightning (and DeepSpeed) take them: the moment to add groups that exist from
    the start. The model's own method is restored by :meth:`remove`."""

    def __init__(self, on_built: Callable[[list[Optimizer], list[LRSchedulerConfig]], None]) -> None:
        self.on_built = on_built
        self.module: Any = None

    def install(self, pl_module: Any) -> None:
        original = pl_module.configure_optimizers

        @functools.wraps(original)
        def configure_optimizers() -> Any:
            config = original()
            optimizers, schedulers, intervals = _lightning.parse_optimizers(config)
            self.on_built(
                optimizers, [LRSchedulerConfig(s, interval=i) for s, i in zip(schedulers, intervals, strict=True)]
            )
            return config

        pl_module.configure_optimizers = configure_optimizers
        self.module = pl_module

    def remove(self) -> None:
        if self.module is not None:
            del self.module.configure_optimizers  # the instance attribute: back to the class's method
            self.module = None
