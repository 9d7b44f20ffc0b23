"""The callback every fine-tuning strategy is: a schedule, run by parts that each own one concern.

:class:`FinetuningStrategy` extends Lightning's ``BaseFinetuning``. A strategy is its schedule, the
list of :class:`~finetune_strategies.schedule.Phase` that :meth:`FinetuningStrategy.unfreeze_phases`
returns; each built-in is a short preset of it. The callback composes:

* :mod:`~finetune_strategies.batchnorm` - freezing, thawing, and the BatchNorm policy;
* :mod:`~finetune_strategies.groups` - the param groups each phase brings (named, layer-wise lr decay,
  pre-registered for DeepSpeed), with :mod:`~finetune_strategies.schedulers` teaching every LR
  scheduler about them;
* :mod:`~finetune_strategies.feature_cache` - the frozen-feature cache session;
* :mod:`~finetune_strategies.distributed` - re-wrapping DDP when the trainable set changes;
* :mod:`~finetune_strategies.state` - the resume state written into checkpoints;
* :mod:`~finetune_strategies.compat` - what Flash's and Lightning's own callbacks need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, TypedDict

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from finetune_strategies import _lightning, compat, distributed
from finetune_strategies.batchnorm import BatchNormPolicy, own_parameters
from finetune_strategies.errors import (
    ConfigurationError,
    MissingModuleError,
    ScheduleError,
    StrategySpecError,
    StrategySpecTypeError,
)
from finetune_strategies.feature_cache import CacheSession, CacheStats
from finetune_strategies.groups import GroupPlan, ParamGroups, not_in_optimizer, plan_phase_groups
from finetune_strategies.layers import LAYER_UNITS, Layer, LayerUnit, list_layers, name_parameters
from finetune_strategies.schedule import Phase, check_decay, check_order
from finetune_strategies.schedulers import pad_to_groups, schedulers_of, teach_schedulers
from finetune_strategies.state import StrategyState
from finetune_strategies.triggers import Mode, Plateau, StageWatch, Transition, decide, restore
from finetune_strategies.validation import (
    check_bool,
    check_names,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)


class StrategyOptions(TypedDict, total=False):
    """Keyword options that every strategy accepts (see :class:`FinetuningStrategy`)."""

    attr_names: str | Sequence[str]
    train_bn: bool
    bn_eval: bool
    lr: float | None
    initial_denom_lr: float
    optimizer_index: int
    preregister_groups: bool
    cache_features: bool
    cache_max_bytes: int
    layer_lr_decay: float | None
    layer_unit: LayerUnit | None
    monitor: str | None
    mode: Mode
    patience: int
    min_delta: float
    max_epochs: int | None
    restore_best: bool


class FinetuningStrategy(BaseFinetuning):
    """Freeze modules before training and unfreeze them on a schedule.

    Args:
        attr_names: Attribute(s) of the LightningModule to freeze when it has no
            ``modules_to_freeze()`` method. Dotted paths such as ``"encoder.backbone"`` work.
        train_bn: Keep the affine parameters of BatchNorm layers in frozen modules trainable
            (Flash's and Lightning's default). With ``False`` they stay frozen, also after an unfreeze.
        bn_eval: Put the BatchNorm layers of frozen modules in eval mode, so that they normalise
            with their running statistics and do not update them, until they are unfrozen.
        lr: Learning rate of an unfrozen param group. ``None`` (default) uses group 0's current lr
            divided by ``initial_denom_lr``.
        initial_denom_lr: Divisor used when ``lr`` is ``None`` (default 10, as in Lightning).
        optimizer_index: With several optimizers, the one that receives unfrozen parameters.
        preregister_groups: Give every phase its param groups (lr 0) when the optimizer is built,
            instead of adding groups when phases start. Needed by DeepSpeed, whose optimizer cannot
            take new groups. Under DeepSpeed the pending parameters keep ``requires_grad=True`` and
            their gradients are zeroed until their phase starts.
        cache_features: Until the first phase starts, compute each training sample's features
            once and reuse them in later epochs (see :mod:`finetune_strategies.feature_cache`).
            Needs the frozen modules fully frozen (``train_bn=False``), BatchNorm in eval mode
            (``bn_eval=True``), no active dropout and a deterministic training transform; refuses
            otherwise. The cache is dropped when the first phase starts.
        cache_max_bytes: Memory bound of the feature cache (default 2 GiB).
        layer_lr_decay: Layer-wise learning-rate decay in (0, 1]: every layer a phase unfreezes gets
            its own param group, with lr ``phase_lr * layer_lr_decay ** k``, ``k`` counting the layers
            from the top layer of the backbone (``k = 0``). ``None`` (default): one group per phase.
        layer_unit: What a layer is (``"blocks"``, ``"param_modules"`` or ``"flash_leaves"``, see
            :mod:`finetune_strategies.layers`). ``None`` uses the strategy's default: ``"blocks"``, or
            ``"param_modules"`` for ``unfreeze_milestones``.
        monitor: End every stage when this validation metric plateaus, instead of waiting for the next
            phase's epoch, which then only says when it starts at the latest (see
            :mod:`finetune_strategies.triggers`). ``None`` (default): phases start at their epochs.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        patience: How many validation runs without improvement end a stage.
        min_delta: The least change of ``monitor`` that counts as an improvement.
        max_epochs: The most epochs a stage may run before the next phase starts.
        restore_best: Before the next phase unfreezes anything, put back the weights and buffers of the
            ending stage's best validation (default True).
    """

    metadata_example: ClassVar[str] = ""
    """How the ``(name, metadata)`` spec of this strategy looks, for error messages."""
    default_layer_unit: ClassVar[LayerUnit] = "blocks"
    """The layer unit when ``layer_unit`` is not given."""

    _pl_module: pl.LightningModule | None
    _phases: list[Phase]
    _module_names: dict[int, str]  # id(module) -> qualified name in the LightningModule
    _unfrozen: list[tuple[str, bool]]  # (module name, train_bn) made trainable so far, for resume
    _started: set[int]  # indices of phases that have started
    _trainer: pl.Trainer | None
    _epoch: int
    _run: tuple[int, int] | None
    _lr_configs: list[LRSchedulerConfig]
    _watch: StageWatch
    _bn: BatchNormPolicy
    _groups: ParamGroups
    _cache: CacheSession
    transitions: list[Transition]
    """The phase starts that triggers decided in the current (or last) fit."""
    _layers: list[Layer] | None
    _warned_nothing_to_freeze: bool

    def __init__(
        self,
        attr_names: str | Sequence[str] = "backbone",
        train_bn: bool = True,
        *,
        bn_eval: bool = False,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        optimizer_index: int = 0,
        preregister_groups: bool = False,
        cache_features: bool = False,
        cache_max_bytes: int = 2**31,
        layer_lr_decay: float | None = None,
        layer_unit: LayerUnit | None = None,
        monitor: str | None = None,
        mode: Mode = "min",
        patience: int = 1,
        min_delta: float = 0.0,
        max_epochs: int | None = None,
        restore_best: bool = True,
    ) -> None:
        super().__init__()
        self.attr_names = check_names("attr_names", attr_names)
        self.train_bn = check_bool("train_bn", train_bn)
        self.bn_eval = check_bool("bn_eval", bn_eval)
        self.lr = None if lr is None else check_positive_float("lr", lr)
        self.initial_denom_lr = check_positive_float("initial_denom_lr", initial_denom_lr)
        self.optimizer_index = check_non_negative_int("optimizer_index", optimizer_index)
        self.preregister_groups = check_bool("preregister_groups", preregister_groups)
        self.cache_features = check_bool("cache_features", cache_features)
        self.cache_max_bytes = check_positive_int("cache_max_bytes", cache_max_bytes)
        self.layer_lr_decay = check_decay("layer_lr_decay", layer_lr_decay)
        if layer_unit is not None and layer_unit not in LAYER_UNITS:
            raise StrategySpecError(f"`layer_unit` must be one of {list(LAYER_UNITS)}, got {layer_unit!r}.")
        self.layer_unit: LayerUnit | None = layer_unit
        plateau = Plateau(monitor or "-", mode, patience, min_delta, max_epochs, restore_best)  # checks them all
        self.plateau: Plateau | None = plateau if monitor is not None else None
        self._reset()

    @classmethod
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        """Turn the metadata of a ``(name, metadata)`` spec into constructor keywords (``None``: none)."""
        if metadata is None:
            return {}
        raise StrategySpecTypeError(
            f"{cls.__name__} takes no metadata: give it by name alone (or with None), got metadata {metadata!r}."
        )

    # ------------------------------------------------------------------ the schedule
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        """The schedule: which modules become trainable at which epoch. Built-ins override this."""
        return []

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze the modules found by :meth:`find_modules_to_freeze`."""
        for _, module in self.find_modules_to_freeze(pl_module):
            self._bn.freeze(module)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Start, in order, every phase that is due at ``epoch`` and has not started (a mid-epoch resume
        has): its epoch has come, or the stage before it ended on its plateau trigger."""
        while (due := self._next_due(epoch)) is not None:
            index, reason = due
            phase = self._phases[index]
            watch = self._watch
            if phase.after is not None and phase.after.restore_best and watch.snapshot is not None:
                restore(pl_module, watch.snapshot)
            self.start_phase(index, optimizer)
            transition = Transition(epoch, index, phase.label, reason, watch.best, watch.best_epoch)
            self.transitions.append(transition)
            rank_zero_info(f"{type(self).__name__}: {transition}")
            self._watch = StageWatch(start_epoch=epoch)

    def _next_phase(self) -> int | None:
        """The first phase that has not started (phases start in order), or None."""
        return next((i for i in range(len(self._phases)) if i not in self._started), None)

    def _next_due(self, epoch: int) -> tuple[int, str] | None:
        """The next phase, if it starts at ``epoch``, with the reason."""
        index = self._next_phase()
        if index is None:
            return None
        phase = self._phases[index]
        if phase.after is not None:
            if self._watch.ended is not None:
                return index, f"{phase.after.monitor} plateaued"
            if self._watch.capped(epoch, phase.after):
                return index, f"the stage ran its max_epochs={phase.after.max_epochs}"
        if phase.epoch is not None and epoch >= phase.epoch:
            return index, f"epoch {phase.epoch}"
        return None

    @property
    def watched(self) -> Plateau | None:
        """The plateau trigger that ends the current stage, if any."""
        index = self._next_phase()
        return None if index is None else self._phases[index].after

    def find_modules_to_freeze(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Module]]:
        """``pl_module.modules_to_freeze()`` if defined, else the modules named by ``attr_names``.

        ``modules_to_freeze()`` may return ``None`` (Flash's default): nothing is frozen, with a warning.
        """
        names = {id(m): n for n, m in pl_module.named_modules()}
        hook = getattr(pl_module, "modules_to_freeze", None)
        if callable(hook):
            found = hook()
            if found is None:
                if not self._warned_nothing_to_freeze:
                    self._warned_nothing_to_freeze = True
                    rank_zero_warn(
                        f"{type(pl_module).__name__}.modules_to_freeze() returned None: {type(self).__name__} "
                        "has nothing to freeze, so the whole model trains from the start."
                    )
                return []
            modules = [found] if isinstance(found, nn.Module) else list(found)
            if not all(isinstance(m, nn.Module) for m in modules):
                raise MissingModuleError(
                    f"{type(pl_module).__name__}.modules_to_freeze() must return a module, modules or None, "
                    f"got {found!r}."
                )
            return [(names.get(id(m), type(m).__name__), m) for m in modules]
        roots = []
        for attr in self.attr_names:
            try:
                module = pl_module.get_submodule(attr)
            except AttributeError:
                module = None
            if not isinstance(module, nn.Module):
                raise MissingModuleError(
                    f"{type(pl_module).__name__} has no module attribute `{attr}` to freeze. Give the "
                    f"model a `{attr}` submodule, define `modules_to_freeze()` on it, or pass "
                    f"attr_names=[...] naming the modules to freeze."
                )
            roots.append((attr, module))
        return roots

    def backbone_layers(self, pl_module: pl.LightningModule) -> list[Layer]:
        """The layers of the frozen modules, bottom to top, in the strategy's ``layer_unit``."""
        if self._layers is None:
            unit = self.layer_unit or self.default_layer_unit
            self._layers = list_layers(self.find_modules_to_freeze(pl_module), unit)
        return self._layers

    # ------------------------------------------------------------------ helpers for subclasses
    filter_on_optimizer = staticmethod(not_in_optimizer)
    unfreeze_and_add_param_group = staticmethod(compat.unfreeze_and_add_param_group)
    unfreeze_and_extend_param_group = staticmethod(compat.unfreeze_and_extend_param_group)

    def thaw(self, modules: Iterable[nn.Module], train_bn: bool) -> None:
        """Make the modules' own parameters trainable, and remember them so that a resume does it again."""
        modules = list(modules)
        self._bn.thaw(modules, train_bn)
        for module in modules:
            name = self._module_names.get(id(module))
            owns = isinstance(module, _BatchNorm) or any(True for _ in module.parameters(recurse=False))
            if name is not None and owns and (name, train_bn) not in self._unfrozen:
                self._unfrozen.append((name, train_bn))

    def name_params(self, params: Iterable[nn.Parameter]) -> str:
        """A short name for a set of the model's parameters (:func:`~finetune_strategies.layers.name_parameters`)."""
        assert self._pl_module is not None
        return name_parameters(self._pl_module, params)

    def start_phase(self, index: int, optimizer: Optimizer) -> None:
        """Unfreeze phase ``index``, give it its param groups, and its LR scheduler if it brings one."""
        phase = self._phases[index]
        modules = phase.thawed_modules()
        frozen_before = {id(p) for p in own_parameters(modules, True) if not p.requires_grad}
        self.thaw(modules, self.train_bn)
        self._groups.start(index, optimizer, self._schedulers, frozen_before)
        self._started.add(index)
        if phase.reset_optimizer_state:
            optimizer.state.clear()
        if phase.lr_scheduler is not None:
            self._install_scheduler(phase, optimizer)
        if len(self._started) == len(self._phases) and self._trainer is not None:
            self._hold_early_stopping(self._trainer)  # the last phase: EarlyStopping counts from here

    def _install_scheduler(self, phase: Phase, optimizer: Optimizer) -> None:
        """Replace the schedulers of ``optimizer`` by the phase's own (each group keeps its current lr as
        its base, so every group keeps its ratio). Lengths it leaves out (``T_max``, OneCycle's
        ``total_steps``) span the rest of the run."""
        trainer, epochs, steps = self._trainer, None, None
        if trainer is not None and trainer.max_epochs is not None and trainer.max_epochs > 0:
            epochs = max(1, trainer.max_epochs - trainer.current_epoch)  # the rest of the run
            batches = trainer.num_training_batches  # not known yet on a resume, whose state then replaces it
            per_epoch = int(batches) // trainer.accumulate_grad_batches if math.isfinite(batches) else 1
            steps = epochs * max(1, per_epoch)
        elif self._run is not None:  # a plan: no trainer runs
            max_epochs, per_epoch = self._run
            epochs = max(1, max_epochs - self._epoch)
            steps = epochs * per_epoch
        built = phase.lr_scheduler.build(optimizer, trainer, epochs=epochs, total_steps=steps or None)
        config = LRSchedulerConfig(**built)
        drives = set(map(id, schedulers_of(self._schedulers, optimizer)))
        self._lr_configs[:] = [c for c in self._lr_configs if id(c.scheduler) not in drives] + [config]

    @property
    def schedule(self) -> list[Phase]:
        """The schedule bound to the model of the current (or last) fit."""
        return list(self._phases)

    @property
    def group_plans(self) -> list[GroupPlan]:
        """The param groups each phase brings, as planned for the current (or last) fit."""
        return list(self._groups.plans)

    @property
    def started_phases(self) -> list[int]:
        """Indices of the phases that have started, in order."""
        return sorted(self._started)

    @property
    def cache_stats(self) -> dict[str, CacheStats]:
        """Per frozen module, what its feature cache held and served (filled when the cache is dropped)."""
        return self._cache.stats

    # ------------------------------------------------------------------ the same steps, outside a fit
    def prepare(self, pl_module: pl.LightningModule) -> None:
        """Freeze ``pl_module`` and bind the schedule and its param groups to it (``setup`` does this)."""
        self._pl_module = pl_module
        self._module_names = {id(m): n for n, m in pl_module.named_modules()}
        self.freeze_before_training(pl_module)
        phases = self.unfreeze_phases(pl_module)
        plateau = self.plateau
        self._phases = [p._replace(after=plateau) if p.after is None and plateau else p for p in phases]
        check_order(self._phases, type(self).__name__)
        plans: list[GroupPlan] = []
        for index, phase in enumerate(self._phases):
            decay = phase.layer_lr_decay if phase.layer_lr_decay is not None else self.layer_lr_decay
            plans += plan_phase_groups(
                index,
                phase.label,
                phase.thawed_modules(),
                train_bn=self.train_bn,
                kept_trainable=self._bn.kept_trainable,
                lr=phase.lr if phase.lr is not None else self.lr,
                layer_lr_decay=decay,
                layers=self.backbone_layers(pl_module) if decay is not None else [],
                name_params=self.name_params,
            )
        if self.layer_lr_decay is not None and not plans:
            rank_zero_warn(f"layer_lr_decay has no effect: {type(self).__name__} unfreezes nothing.")
        self._groups = ParamGroups(plans, self.preregister_groups, self.initial_denom_lr)

    @property
    def _schedulers(self) -> list[Any]:
        return [config.scheduler for config in self._lr_configs]

    @property
    def lr_scheduler_configs(self) -> list[LRSchedulerConfig]:
        """The LR schedulers the strategy teaches and replaces: the trainer's during a fit."""
        return self._lr_configs

    def attach_optimizer(
        self, optimizer: Optimizer, configs: list[LRSchedulerConfig], *, deepspeed: bool = False
    ) -> None:
        """Add the param groups that exist from the start (pre-registered ones, and those of parameters
        that already train) to a newly built optimizer; keep pending ones from training."""
        self._lr_configs = configs
        self._started |= self._groups.build(optimizer, self._schedulers)
        self._groups.gate(deepspeed, self._started)

    def finish(self) -> None:
        """Drop the feature caches and the gradient masks of pending groups."""
        self._cache.close()
        self._groups.remove_masks()

    def advance(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer, *, run: tuple[int, int] | None = None
    ) -> None:
        """Run ``finetune_function`` for ``epoch``; every LR scheduler learns the groups it added.

        ``run`` is ``(max_epochs, steps per epoch)`` when no trainer runs (a plan), for the lengths of
        the LR schedulers phases bring."""
        self._epoch, self._run = epoch, run
        count = len(optimizer.param_groups)
        compat.call_finetune_function(self, pl_module, epoch, optimizer)
        for index in range(count, len(optimizer.param_groups)):
            teach_schedulers(self._schedulers, optimizer, index, 1.0 / self.initial_denom_lr)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._reset()
        others = [c for c in trainer.callbacks if isinstance(c, BaseFinetuning) and c is not self]  # type: ignore[attr-defined]
        if others:
            raise ConfigurationError(
                f"Two fine-tuning callbacks are attached: {type(self).__name__} and "
                f"{', '.join(type(c).__name__ for c in others)}. Use one strategy per run."
            )
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            if not self.preregister_groups:
                raise ConfigurationError(
                    f"{type(self).__name__} adds optimizer param groups during training, which DeepSpeed "
                    "does not allow. Use the `*_deepspeed` strategy of the same name (or pass "
                    "preregister_groups=True)."
                )
            if trainer.strategy.zero_stage_3:
                raise ConfigurationError("DeepSpeed ZeRO stage 3 is not supported; use stage 1 or 2.")
        self._trainer = trainer
        self.prepare(pl_module)
        self._check_triggers(trainer, pl_module, stage)
        if stage == "fit" and self._groups.plans:
            self._wrap_configure_optimizers(trainer, pl_module)

    def _check_triggers(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        watched = [phase for phase in self._phases if phase.after is not None]
        if watched and (not is_overridden("validation_step", pl_module) or trainer.limit_val_batches == 0):
            raise ConfigurationError(
                f"{type(self).__name__} ends a stage when {watched[0].after.monitor!r} plateaus "  # type: ignore[union-attr]
                f"({watched[0].describe_start()}), but this fit runs no validation "
                f"({type(pl_module).__name__} has no validation_step, or limit_val_batches=0). Add a validation "
                "loop that logs the metric, or give the phases epochs instead."
            )
        per_phase = [p.label for p in self._phases if p.lr_scheduler is not None or p.reset_optimizer_state]
        if per_phase and isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ConfigurationError(
                f"Phase(s) {per_phase} bring their own LR scheduler or reset the optimizer state, which DeepSpeed's "
                "engine does not let a callback do. Remove those phase options, or train without DeepSpeed."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap_configure_optimizers(pl_module)
        if not 0 <= self.optimizer_index < len(trainer.optimizers):
            raise ScheduleError(
                f"optimizer_index={self.optimizer_index}, but configure_optimizers returned "
                f"{len(trainer.optimizers)} optimizer(s)."
            )
        last_phase = max((p.epoch for p in self._phases if p.epoch is not None and p.after is None), default=-1)
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= last_phase:
            rank_zero_warn(
                f"{type(self).__name__} starts a phase at epoch {last_phase}, but max_epochs="
                f"{trainer.max_epochs} ends training before it (epochs count from 0)."
            )
        super().on_fit_start(trainer, pl_module)  # rebuilds param groups on resume
        self._lr_configs = trainer.lr_scheduler_configs
        with_scheduler = [i for i in sorted(self._started) if self._phases[i].lr_scheduler is not None]
        if with_scheduler:  # a resumed run: Lightning loads the saved scheduler state into this one next
            self._install_scheduler(self._phases[with_scheduler[-1]], trainer.optimizers[self.optimizer_index])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replay a resumed run's unfreezes here: DeepSpeed restores callback state only after
        # on_fit_start, and every strategy has restored it by now.
        for name, train_bn in self._unfrozen:
            self._bn.thaw([pl_module.get_submodule(name)], train_bn)
        for index in self._started:
            self._groups.ungate(index)
        distributed.sync_ddp(trainer, stale=bool(self._unfrozen))  # DDP wrapped before the replay
        self._lr_configs = trainer.lr_scheduler_configs
        optimizer = trainer.optimizers[self.optimizer_index]
        for scheduler in schedulers_of(self._schedulers, optimizer):
            pad_to_groups(scheduler, optimizer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[self.optimizer_index]
        self.advance(pl_module, trainer.current_epoch, optimizer)
        distributed.sync_ddp(trainer)  # DDP must all-reduce what was just unfrozen
        if self.cache_features:
            self._cache.epoch_start(self.find_modules_to_freeze(pl_module), bool(self._started))
        if not self.preregister_groups:  # remember the groups by parameter name, for resume
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self._internal_optimizer_metadata[self.optimizer_index] = [
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": [names[id(p)] for p in g["params"]],
                }
                for g in optimizer.param_groups
            ]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        plateau = self.watched
        if plateau is not None and self._watch.ended is None:
            decision = decide(trainer, plateau, self._watch.best)
            self._watch.observe(decision.improved, decision.value, trainer.current_epoch, plateau, pl_module)
        if len(self._started) < len(self._phases):
            self._hold_early_stopping(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(self._started) < len(self._phases):
            self._hold_early_stopping(trainer)

    def _hold_early_stopping(self, trainer: pl.Trainer) -> None:
        """Keep Lightning's EarlyStopping from counting before the last phase starts: reset its count and
        best score, and undo a stop it decided in this epoch."""
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(callback, EarlyStopping):
                continue
            if trainer.should_stop and callback.stopped_epoch == trainer.current_epoch:
                trainer.should_stop = False
                callback.stopped_epoch = 0
            callback.wait_count = 0
            callback.best_score = torch.tensor(torch.inf if callback.monitor_op == torch.lt else -torch.inf)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._bn.keep_eval()
        if self.cache_features:
            self._cache.batch_start()  # after the BatchNorm layers were put in eval mode above

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._cache.batch_end()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unwrap_configure_optimizers(pl_module)
        self.finish()

    def state_dict(self) -> dict[str, Any]:
        return StrategyState(
            strategy=type(self).__name__,
            schedule=[phase.signature() for phase in self._phases],
            started_phases=sorted(self._started),
            unfrozen_modules=list(self._unfrozen),
            optimizer_groups=self._internal_optimizer_metadata,
            stage=self._watch.state_dict(),
            transitions=[vars(t) for t in self.transitions],
        ).to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        state = StrategyState.from_dict(state_dict)
        self._unfrozen = state.unfrozen_modules
        self._started = set(state.started_phases)
        self._watch = StageWatch.from_state_dict(state.stage)
        self.transitions = [Transition(**t) for t in state.transitions]

    # ------------------------------------------------------------------ internals
    def _reset(self) -> None:
        self._internal_optimizer_metadata = {}
        self._pl_module = None
        self._trainer = None
        self._phases = []
        self._module_names = {}
        self._unfrozen = []
        self._started = set()
        self._lr_configs = []
        self._epoch, self._run = 0, None
        self._layers = None
        self._watch = StageWatch()
        self.transitions = []
        self._warned_nothing_to_freeze = False
        self._bn = BatchNormPolicy(self.train_bn, self.bn_eval)
        self._groups = ParamGroups([], self.preregister_groups, self.initial_denom_lr)
        self._cache = CacheSession(self.cache_max_bytes)
        self._original_configure_optimizers: Any = None

    def _wrap_configure_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        original = pl_module.configure_optimizers
        self._original_configure_optimizers = original
        deepspeed = isinstance(trainer.strategy, DeepSpeedStrategy)

        @functools.wraps(original)
        def configure_optimizers() -> Any:
            config = original()
            optimizers, schedulers, intervals = _lightning.parse_optimizers(config)
            if self.optimizer_index < len(optimizers):  # else on_fit_start raises
                configs = [LRSchedulerConfig(s, interval=i) for s, i in zip(schedulers, intervals, strict=True)]
                self.attach_optimizer(optimizers[self.optimizer_index], configs, deepspeed=deepspeed)
            return config

        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]

    def _unwrap_configure_optimizers(self, pl_module: pl.LightningModule) -> None:
        if self._original_configure_optimizers is not None:
            del pl_module.configure_optimizers  # drop the instance attribute, back to the class method
            self._original_configure_optimizers = None


FlashBaseFinetuning = FinetuningStrategy
"""Flash's name for the base callback, so Flash callbacks only change their import line."""
