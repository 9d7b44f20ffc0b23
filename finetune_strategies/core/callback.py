"""The callback every fine-tuning strategy is: a schedule, run by parts that each own one concern.

:class:`FinetuningStrategy` extends Lightning's ``BaseFinetuning``. A strategy is its schedule, the
list of :class:`~finetune_strategies.core.schedule.Phase` that :meth:`FinetuningStrategy.unfreeze_phases`
returns; each built-in is a short preset of it. The callback composes:

* :mod:`~finetune_strategies.core.options` - the keyword options every strategy takes, and their help;
* :mod:`~finetune_strategies.model.batchnorm` - freezing, thawing, and the BatchNorm policy;
* :mod:`~finetune_strategies.core.groups` - the param groups each phase brings (named, layer-wise lr decay,
  pre-registered for DeepSpeed), with :mod:`~finetune_strategies.core.lr_schedulers` teaching every LR
  scheduler about them;
* :mod:`~finetune_strategies.core.feature_cache` - the frozen-feature cache session;
* :mod:`~finetune_strategies.core.progress` and :mod:`~finetune_strategies.core.triggers` - where the run is in
  its schedule, and the plateau triggers that end stages;
* :mod:`~finetune_strategies.core.distributed` - re-wrapping DDP when the trainable set changes;
* :mod:`~finetune_strategies.core.l2_sp` - the L2-SP penalty toward the pretrained weights;
* :mod:`~finetune_strategies.core.auto_rgn` - Auto-RGN, each layer's lr scaled by its relative gradient norm;
* :mod:`~finetune_strategies.core.state` - the resume state written into checkpoints;
* :mod:`~finetune_strategies.core.compat` - what Flash's and Lightning's own callbacks need;
* :mod:`~finetune_strategies.core.compiled` - a compiled model's recompile limit and recompile counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.checkpointing import trainable_only
from finetune_strategies.checkpointing.optimizer_states import check_optimizer_states
from finetune_strategies.core import compat, distributed
from finetune_strategies.core.auto_rgn import AutoRGN, LayerLr, check_layer_lr
from finetune_strategies.core.compat import Modules
from finetune_strategies.core.compiled import CompileReport, CompileSession
from finetune_strategies.core.feature_cache import CacheSession, CacheStats
from finetune_strategies.core.groups import GroupPlan, OptimizerHook, ParamGroups, not_in_optimizer, plan_groups
from finetune_strategies.core.l2_sp import L2SP
from finetune_strategies.core.lr_schedulers import (
    pad_to_groups,
    remaining_run,
    replace_schedulers,
    schedulers_of,
    teach_schedulers,
)
from finetune_strategies.core.options import StrategyOptions as StrategyOptions  # its 0.2 home
from finetune_strategies.core.options import document_options
from finetune_strategies.core.progress import ScheduleProgress
from finetune_strategies.core.schedule import Phase, check_decay, check_order
from finetune_strategies.core.state import (
    StrategyState,
    describe_option_differences,
    group_layout,
    option_differences,
)
from finetune_strategies.core.triggers import Mode, Plateau, Transition, check_validation, hold_early_stopping, restore
from finetune_strategies.errors import (
    ConfigurationError,
    ResumeMismatchError,
    ScheduleError,
    StrategySpecError,
    StrategySpecTypeError,
)
from finetune_strategies.model.batchnorm import BatchNormPolicy, own_parameters
from finetune_strategies.model.layers import LAYER_UNITS, Layer, LayerUnit, list_layers, name_parameters
from finetune_strategies.model.roots import FrozenModules, check_frozen, find_frozen
from finetune_strategies.validation import (
    check_bool,
    check_names,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)


@document_options
class FinetuningStrategy(BaseFinetuning):
    """Freeze modules before training and unfreeze them on a schedule.

    Its keyword options are :class:`~finetune_strategies.core.options.StrategyOptions`; the ``Args`` section
    that documents them is appended to this docstring from :data:`~finetune_strategies.core.options.OPTION_DOCS`.
    """

    metadata_example: ClassVar[str] = ""
    """How the ``(name, metadata)`` spec of this strategy looks, for error messages."""
    default_layer_unit: ClassVar[LayerUnit] = "blocks"
    """The layer unit when ``layer_unit`` is not given."""
    default_save_trainable_only: ClassVar[bool] = False
    """Whether checkpoints keep only what trained when ``save_trainable_only`` is not given."""
    option_defaults: ClassVar[dict[str, Any]] = {}
    """Options whose default this strategy changes. Python sees them in ``__init__``; the command line, whose
    parser fills every option with this base class's default, sets them first (:meth:`changed_defaults`)."""
    freezes: ClassVar[bool] = True
    """Whether the strategy freezes modules (``no_freeze`` does not), so that its optimizer state cannot
    come from a run without a strategy."""

    _fit_trainer: pl.Trainer | None
    _pl_module: pl.LightningModule | None
    _module_names: dict[int, str]  # id(module) -> qualified name in the LightningModule
    _unfrozen: list[tuple[str, bool]]  # (module name, train_bn) made trainable so far, for resume
    _lr_configs: list[LRSchedulerConfig]
    _epoch: int
    _run: tuple[int, int] | None
    _layers: list[Layer] | None
    _frozen: tuple[pl.LightningModule, FrozenModules] | None  # what find_frozen found, for this fit's model
    _progress: ScheduleProgress
    _bn: BatchNormPolicy
    _groups: ParamGroups
    _cache: CacheSession
    _hook: OptimizerHook
    _l2sp: L2SP
    _rgn: AutoRGN
    _compiled: CompileSession
    _undo_on_load: Callable[[], None]

    def __init__(
        self,
        attr_names: str | Sequence[str] | None = None,
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
        layer_lr: LayerLr | None = None,
        monitor: str | None = None,
        mode: Mode = "min",
        patience: int = 1,
        min_delta: float = 0.0,
        max_epochs: int | None = None,
        restore_best: bool = True,
        l2_sp: float | None = None,
        l2_sp_beta: float | None = None,
        save_trainable_only: bool | None = None,
        strict_compile: bool = False,
    ) -> None:
        super().__init__()
        self.attr_names = None if attr_names is None else check_names("attr_names", attr_names)
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
        self.layer_lr = check_layer_lr(layer_lr)
        plateau = Plateau(monitor or "-", mode, patience, min_delta, max_epochs, restore_best)  # checks them all
        self.plateau: Plateau | None = plateau if monitor is not None else None
        penalty = L2SP(l2_sp, l2_sp_beta)  # checks them
        self.l2_sp, self.l2_sp_beta = penalty.alpha, penalty.beta
        self.save_trainable_only = (
            self.default_save_trainable_only
            if save_trainable_only is None
            else check_bool("save_trainable_only", save_trainable_only)
        )
        self.strict_compile = check_bool("strict_compile", strict_compile)
        self._reset()

    @classmethod
    def changed_defaults(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The defaults this strategy changes when it is given the options ``given`` (a ``*_deepspeed`` name gives
        ``preregister_groups=True``): :attr:`option_defaults`. The command line sets them before the user's flags."""
        return dict(cls.option_defaults)

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

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze the modules found by :meth:`find_frozen`; a head inside them keeps training."""
        frozen = self.find_frozen(pl_module)
        for _, module in frozen.roots:
            self._bn.freeze(module)
        for _, module in frozen.head:
            self._bn.keep(module)

    @override
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Start, in order, every phase that is due at ``epoch`` and has not started (a mid-epoch resume
        has): its epoch has come, or the stage before it ended on its plateau trigger. A plateau-ended
        stage's best weights are put back first (``restore_best``). Before that, the groups of phases that
        started earlier and bring an lr ramp get this epoch's lr (:class:`~finetune_strategies.core.groups.LrRamp`)."""
        self._groups.ramp(epoch, optimizer, self._schedulers)
        while (due := self._progress.next_due(epoch)) is not None:
            index, reason = due
            snapshot = self._progress.best_snapshot(index)
            if snapshot is not None:
                restore(pl_module, snapshot)
            self.start_phase(index, optimizer)
            self._progress.record(index, epoch, reason, type(self).__name__)

    def find_frozen(self, pl_module: pl.LightningModule) -> FrozenModules:
        """What the strategy freezes (:func:`~finetune_strategies.model.roots.find_frozen`): the model's
        ``modules_to_freeze()``, else ``attr_names``, else its ``backbone``, else the backbone of the model
        it holds (:func:`~finetune_strategies.model.anatomy.find_anatomy`), whose head keeps training.

        ``modules_to_freeze()`` may return ``None`` (Flash's default): nothing is frozen, with a warning. A
        subclass that overrides :meth:`find_modules_to_freeze` (0.1's hook) decides instead.
        """
        if type(self).find_modules_to_freeze is not FinetuningStrategy.find_modules_to_freeze:
            found_by = f"{type(self).__name__}.find_modules_to_freeze()"
            return FrozenModules(tuple(self.find_modules_to_freeze(pl_module)), found_by=found_by)
        if self._frozen is not None and self._frozen[0] is pl_module:  # found once per fit: the anatomy is a walk
            return self._frozen[1]
        frozen = find_frozen(pl_module, self.attr_names)
        if frozen is None:
            rank_zero_warn(
                f"{type(pl_module).__name__}.modules_to_freeze() returned None: {type(self).__name__} has nothing "
                "to freeze, so the whole model trains from the start."
            )
        found = frozen or FrozenModules((), found_by="modules_to_freeze() returned None")
        self._frozen = (pl_module, found)
        return found

    def find_modules_to_freeze(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of the frozen modules (:meth:`find_frozen`), as Flash's callbacks expect."""
        return list(self.find_frozen(pl_module).roots)

    def backbone_layers(self, pl_module: pl.LightningModule) -> list[Layer]:
        """The layers of the frozen modules, bottom to top, in the strategy's ``layer_unit`` (a head
        inside them left out)."""
        if self._layers is None:
            unit = self.layer_unit or self.default_layer_unit
            frozen = self.find_frozen(pl_module)
            self._layers = list_layers(frozen.roots, unit, leave_out=[m for _, m in frozen.head])
        return self._layers

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    @override
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[Any]) -> list[Any]:
        """See :func:`~finetune_strategies.core.groups.not_in_optimizer` (by identity, not by value)."""
        return not_in_optimizer(optimizer, params)

    @staticmethod
    @override
    def unfreeze_and_add_param_group(
        modules: Modules,
        optimizer: Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """See :func:`~finetune_strategies.core.compat.unfreeze_and_add_param_group` (static, as in Lightning)."""
        compat.unfreeze_and_add_param_group(modules, optimizer, lr, initial_denom_lr, train_bn)

    unfreeze_and_extend_param_group = staticmethod(compat.unfreeze_and_extend_param_group)  # Flash's; not Lightning's

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
        """A short name for a set of the model's parameters
        (:func:`~finetune_strategies.model.layers.name_parameters`)."""
        assert self._pl_module is not None
        return name_parameters(self._pl_module, params)

    def start_phase(self, index: int, optimizer: Optimizer) -> None:
        """Unfreeze phase ``index``, give it its param groups, and its LR scheduler if it brings one."""
        phase = self._progress.phases[index]
        modules = phase.thawed_modules()
        frozen_before = {id(p) for p in own_parameters(modules, True) if not p.requires_grad}
        self.thaw(modules, self.train_bn)
        self._groups.start(index, optimizer, self._schedulers, frozen_before, self._epoch)
        self._progress.started.add(index)
        self._compiled.phase_started(phase.label)
        if phase.reset_optimizer_state:
            optimizer.state.clear()
        if phase.lr_scheduler is not None:
            self._install_scheduler(phase, optimizer)
        if self._progress.finished and self._fit_trainer is not None:
            hold_early_stopping(self._fit_trainer)  # the last phase: EarlyStopping counts from here

    def _install_scheduler(self, phase: Phase, optimizer: Optimizer) -> None:
        """The phase's scheduler replaces the optimizer's: each group keeps its current lr as its base, so
        every group keeps its ratio; lengths it leaves out (``T_max``, ``total_steps``) span the rest of the run."""
        epochs, steps = remaining_run(self._fit_trainer, self._epoch, self._run)
        built = phase.lr_scheduler.build(optimizer, self._fit_trainer, epochs=epochs, total_steps=steps)
        replace_schedulers(self._lr_configs, optimizer, LRSchedulerConfig(**built))

    # ------------------------------------------------------------------ what the current (or last) fit holds
    @property
    def schedule(self) -> list[Phase]:
        """The schedule bound to the model."""
        return list(self._progress.phases)

    @property
    def compile_report(self) -> CompileReport:
        """On a compiled model, the current (or last) fit's compiled regions, recompile limit, graphs compiled
        per phase change and falls back to eager (see :mod:`~finetune_strategies.core.compiled`); empty otherwise."""
        return self._compiled.report

    @property
    def started_phases(self) -> list[int]:
        """Indices of the phases that have started, in order."""
        return sorted(self._progress.started)

    @property
    def transitions(self) -> list[Transition]:
        """The phase starts, with when and why (epoch, plateau, max_epochs) and the ending stage's best."""
        return list(self._progress.transitions)

    @property
    def group_plans(self) -> list[GroupPlan]:
        """The param groups each phase brings."""
        return list(self._groups.plans)

    @property
    def lr_scheduler_configs(self) -> list[LRSchedulerConfig]:
        """The LR schedulers the strategy teaches and replaces: the trainer's during a fit."""
        return self._lr_configs

    @property
    def cache_stats(self) -> dict[str, CacheStats]:
        """Per frozen module, what its feature cache held and served (filled when the cache is dropped)."""
        return self._cache.stats

    @property
    def layer_lr_ratios(self) -> dict[str, float]:
        """With ``layer_lr="auto_rgn"``, the last optimizer step's ``lr / scheduled lr`` of every param group
        that had gradients, by group name (``"group <i>"`` for unnamed ones); the largest is 1.0. Empty otherwise."""
        return self._rgn.ratios

    @property
    def l2_sp_bytes(self) -> int:
        """The memory of L2-SP's copy of the pretrained weights in this fit (0 without ``l2_sp``)."""
        return self._l2sp.start.nbytes

    def training_options(self) -> dict[str, Any]:
        """Everything besides the schedule that shapes what trains in this fit, by name, as checkpoints
        record it: a resume with other values is refused (empty before ``setup``). Options that only
        set how strongly something trains (``lr``, ``l2_sp``, ...) may change on resume."""
        pl_module = self._pl_module
        if pl_module is None:
            return {}
        frozen = self.find_frozen(pl_module) if self.freezes else FrozenModules(())
        return {
            "frozen modules": frozen.names,
            "head kept training": [name for name, _ in frozen.head],
            "attr_names": None if self.attr_names is None else list(self.attr_names),
            "train_bn": self.train_bn,
            "bn_eval": self.bn_eval,
            "optimizer_index": self.optimizer_index,
            "preregister_groups": self.preregister_groups,
            "layer_lr_decay": self.layer_lr_decay,
            "layer_unit": self.layer_unit or self.default_layer_unit,
            "layer_lr": self.layer_lr,
            "save_trainable_only": self.save_trainable_only,
            "param groups": [[p.phase, p.name, len(p.params), p.scale] for p in self._groups.plans],
        }

    @property
    def _schedulers(self) -> list[Any]:
        return [config.scheduler for config in self._lr_configs]

    # ------------------------------------------------------------------ the steps of a fit, also used by plans
    def prepare(self, pl_module: pl.LightningModule) -> None:
        """Freeze ``pl_module`` and bind the schedule and its param groups to it (``setup`` does this)."""
        self._pl_module = pl_module
        self._module_names = {id(m): n for n, m in pl_module.named_modules()}
        self.freeze_before_training(pl_module)
        plateau = self.plateau
        phases = [
            p._replace(after=plateau) if p.after is None and plateau else p for p in self.unfreeze_phases(pl_module)
        ]
        check_order(phases, type(self).__name__)
        if self.freezes:
            frozen = self.find_frozen(pl_module)
            if frozen.anatomy is not None:
                rank_zero_info(f"{type(self).__name__}: {frozen.describe()}")
            first = [m for p in phases if p.epoch == 0 and p.after is None for m in p.thawed_modules()]
            at_start = own_parameters(first, True)
            check_frozen(pl_module, frozen, at_start, type(self).__name__)
            if self.cache_features and frozen.head:
                raise ConfigurationError(
                    f"{type(self).__name__}: cache_features caches what the frozen modules output, but the head "
                    f"{', '.join(f'`{n}`' for n, _ in frozen.head)} trains inside `{frozen.names[0]}`, so that output "
                    "changes every step. Give the LightningModule the headless model as its `backbone` (timm: "
                    "num_classes=0) and a head beside it, or name modules whose output the head takes in attr_names."
                )
        self._progress.phases = phases
        self.plan_param_groups(pl_module)
        if self.layer_lr_decay is not None and not self._groups.plans:
            rank_zero_warn(f"layer_lr_decay has no effect: {type(self).__name__} unfreezes nothing.")

    def plan_param_groups(self, pl_module: pl.LightningModule) -> None:
        """Plan every phase's param groups over the parameters ``pl_module`` holds now. ``setup`` plans them
        again when the optimizer is built: ``configure_model`` may have replaced the parameters since
        (FSDP2's ``fully_shard`` does: sharded parameters keep their modules, names and ``requires_grad``)."""
        plans = plan_groups(
            self._progress.phases,
            train_bn=self.train_bn,
            kept_trainable=self._bn.kept_trainable,
            lr=self.lr,
            layer_lr_decay=self.layer_lr_decay if self.layer_lr is None else (self.layer_lr_decay or 1.0),
            layers=lambda: self.backbone_layers(pl_module),
            name_params=self.name_params,
        )
        ramped = self._groups.ramped  # a resume loads the ramps' state before the optimizer is built
        self._groups = ParamGroups(plans, self.preregister_groups, self.initial_denom_lr, ramped=ramped)

    def attach_optimizer(
        self, optimizer: Optimizer, configs: list[LRSchedulerConfig], *, deepspeed: bool = False
    ) -> None:
        """Add the param groups that exist from the start (pre-registered ones, and those of parameters
        that already train) to a newly built optimizer; keep pending ones from training."""
        self._lr_configs = configs
        self._progress.started |= self._groups.build(optimizer, self._schedulers)
        self._groups.gate(deepspeed, self._progress.started)

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

    def finish(self) -> None:
        """Drop the feature caches and the gradient masks of pending groups."""
        self._cache.close()
        self._groups.remove_masks()

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":  # validate / test / predict, e.g. after a fit: keep what the fit recorded
            self._undo_on_load = trainable_only.complete_on_load(pl_module)  # a checkpoint may leave weights out
            return
        self._reset()
        others = [c for c in trainer.callbacks if isinstance(c, BaseFinetuning) and c is not self]  # type: ignore[attr-defined]
        if others:
            raise ConfigurationError(
                f"Two fine-tuning callbacks are attached: {type(self).__name__} and "
                f"{', '.join(type(c).__name__ for c in others)}. Use one strategy per run."
            )
        self._fit_trainer = trainer
        self.prepare(pl_module)
        self._compiled.begin(
            pl_module, len(self._progress.phases), owner=type(self).__name__, strict=self.strict_compile
        )
        self._l2sp.check(trainer, type(self).__name__)
        self._rgn.check(trainer, type(self).__name__)
        self._undo_on_load = trainable_only.complete_on_load(pl_module)  # rebuilds what checkpoints left out
        phases = self._progress.phases
        watched = [p.after for p in phases if p.after is not None]
        distributed.check_engine(
            trainer,
            type(self).__name__,
            preregister=self.preregister_groups,
            restore_best=any(after.restore_best for after in watched),
            cache_features=self.cache_features,
            per_phase=[p.label for p in phases if p.lr_scheduler is not None or p.reset_optimizer_state],
        )
        check_validation(trainer, pl_module, watched, type(self).__name__)
        distributed.before_checkpoint_load(trainer, lambda path, safe: self._resume_before_load(trainer, path, safe))
        deepspeed = isinstance(trainer.strategy, DeepSpeedStrategy)
        if self._groups.plans:

            def on_built(optimizers: list[Optimizer], configs: list[LRSchedulerConfig]) -> None:
                if self.optimizer_index < len(optimizers):  # else on_fit_start raises
                    self.plan_param_groups(pl_module)  # the parameters after configure_model
                    planned = {id(p) for plan in self._groups.plans for p in plan.params}
                    named = pl_module.named_parameters()
                    distributed.check_reduced(trainer, {n: p for n, p in named if id(p) in planned})
                    self.attach_optimizer(optimizers[self.optimizer_index], configs, deepspeed=deepspeed)

            self._hook = OptimizerHook(on_built)
            self._hook.install(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hook.remove()
        if not 0 <= self.optimizer_index < len(trainer.optimizers):
            raise ScheduleError(
                f"optimizer_index={self.optimizer_index}, but configure_optimizers returned "
                f"{len(trainer.optimizers)} optimizer(s)."
            )
        dated = [p.epoch for p in self._progress.phases if p.epoch is not None and p.after is None]
        last_phase = max(dated, default=-1)
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= last_phase:
            rank_zero_warn(
                f"{type(self).__name__} starts a phase at epoch {last_phase}, but max_epochs="
                f"{trainer.max_epochs} ends training before it (epochs count from 0)."
            )
        loaded = _lightning.loaded_checkpoint(trainer) if trainer.ckpt_path else None
        if loaded is not None:  # before Lightning loads its optimizer states into these optimizers
            check_optimizer_states(trainer.ckpt_path, loaded.get("optimizer_states"), trainer.optimizers)
        super().on_fit_start(trainer, pl_module)  # rebuilds param groups on resume
        if self._l2sp.active:
            self._l2sp.begin(trainer, pl_module, self.find_frozen(pl_module))
        self._lr_configs = trainer.lr_scheduler_configs
        phases = self._progress.phases
        with_scheduler = [i for i in sorted(self._progress.started) if phases[i].lr_scheduler is not None]
        if with_scheduler:  # a resumed run: Lightning loads the saved scheduler state into this one next
            self._install_scheduler(phases[with_scheduler[-1]], trainer.optimizers[self.optimizer_index])

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replay a resumed run's unfreezes here: DeepSpeed restores callback state only after
        # on_fit_start, and every strategy has restored it by now.
        self._replay_unfreezes(pl_module)
        distributed.sync_ddp(trainer, stale=bool(self._unfrozen))  # DDP wrapped before the replay
        self._lr_configs = trainer.lr_scheduler_configs
        optimizer = trainer.optimizers[self.optimizer_index]
        for scheduler in schedulers_of(self._schedulers, optimizer):
            pad_to_groups(scheduler, optimizer)

    def _replay_unfreezes(self, pl_module: pl.LightningModule) -> None:
        """Make trainable again what a resumed run had unfrozen, and let its started phases' groups train."""
        for name, train_bn in self._unfrozen:
            self._bn.thaw([distributed.submodule(pl_module, name)], train_bn)
        for index in self._progress.started:
            self._groups.ungate(index)

    def _resume_before_load(self, trainer: pl.Trainer, checkpoint_path: Any, weights_only: bool | None) -> None:
        """Before FSDP or DeepSpeed load the optimizer state: the saved run's unfreezes and param groups, so
        that the load fills the state of every group (see :func:`distributed.before_checkpoint_load`)."""
        state = distributed.read_callback_state(checkpoint_path, self.state_key, weights_only=weights_only)
        if state is None:
            return
        self.load_state_dict(state)
        self._replay_unfreezes(trainer.lightning_module)
        BaseFinetuning.on_fit_start(self, trainer, trainer.lightning_module)  # the saved groups, by parameter name

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[self.optimizer_index]
        self.advance(pl_module, trainer.current_epoch, optimizer)
        distributed.sync_ddp(trainer)  # DDP must all-reduce what was just unfrozen
        self._checkpoints.note(pl_module)
        if self.cache_features:
            self._cache.epoch_start(self.find_modules_to_freeze(pl_module), bool(self._progress.started))
        if not self.preregister_groups:  # remember the groups by parameter name, for resume
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self._internal_optimizer_metadata[self.optimizer_index] = group_layout(optimizer, names)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._compiled.check()
        self._progress.observe(trainer, pl_module)
        if not self._progress.finished:
            hold_early_stopping(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._progress.finished:
            hold_early_stopping(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._bn.keep_eval()
        if self.cache_features:
            self._cache.batch_start()  # after the BatchNorm layers were put in eval mode above

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        self._l2sp.apply(optimizer)  # after DDP's all-reduce and AMP's unscaling, before clipping
        self._rgn.apply(trainer, pl_module, optimizer)  # on the gradients with L2-SP's; the lrs are back after the step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._cache.batch_end()
        self._compiled.check()
        self._rgn.restore_all()  # a step that did not run left its lrs scaled; before checkpoints are saved

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._hook.remove()
        self._undo_on_load()
        self._hook, self._undo_on_load = OptimizerHook(_ignore_optimizers), _nothing  # closures do not pickle
        distributed.remove_load_hook(trainer)
        self.finish()
        self._rgn.end()
        if stage == "fit":
            self._compiled.end()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._compiled.end(check=False)  # dynamo's limits back, whatever stopped the fit
        self._rgn.end()

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # DeepSpeed writes the module's weights itself, from its engine
        trainable = self.save_trainable_only and not isinstance(trainer.strategy, DeepSpeedStrategy)
        self._checkpoints.save(pl_module, checkpoint, trainable)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._checkpoints.restore(checkpoint)

    @override
    def state_dict(self) -> dict[str, Any]:
        progress = self._progress.state_dict()
        return StrategyState(
            strategy=type(self).__name__,
            schedule=[phase.signature() for phase in self._progress.phases],
            started_phases=progress["started_phases"],
            unfrozen_modules=list(self._unfrozen),
            optimizer_groups=self._internal_optimizer_metadata,
            stage=progress["stage"],
            transitions=progress["transitions"],
            l2_sp_start=self._l2sp.state_dict(),
            options=self.training_options(),
            lr_ramps=self._groups.ramp_state(),
        ).to_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = StrategyState.from_dict(state_dict)
        differences = option_differences(state.options, self.training_options())
        if differences:  # a plain Trainer: the library's Trainer refused it before, naming the file
            raise ResumeMismatchError(describe_option_differences("The checkpoint", type(self).__name__, differences))
        count = len(self._progress.phases)
        wrong = [i for i in state.started_phases if not 0 <= i < count] if self._pl_module is not None else []
        if wrong:  # a damaged or crafted state: an IndexError deep inside the resume otherwise
            raise ResumeMismatchError(
                f"The checkpoint's {type(self).__name__} state lists started phases {wrong}, but the schedule has "
                f"{count} phase(s) (0 to {count - 1}). It was not written by this schedule; start a new fit."
            )
        super().load_state_dict(state_dict)
        self._unfrozen = state.unfrozen_modules
        self._progress.load_state_dict(state.to_dict())
        self._l2sp.load_state_dict(state.l2_sp_start, type(self).__name__)
        self._groups.load_ramp_state(state.lr_ramps)

    def _reset(self) -> None:
        self._internal_optimizer_metadata = {}
        self._pl_module = None
        self._fit_trainer = None
        self._module_names = {}
        self._unfrozen = []
        self._lr_configs = []
        self._epoch, self._run = 0, None
        self._layers = None
        self._frozen = None
        self._progress = ScheduleProgress()
        self._bn = BatchNormPolicy(self.train_bn, self.bn_eval)
        self._groups = ParamGroups([], self.preregister_groups, self.initial_denom_lr)
        self._cache = CacheSession(self.cache_max_bytes)
        self._hook = OptimizerHook(_ignore_optimizers)
        self._l2sp = L2SP(self.l2_sp, self.l2_sp_beta)
        if hasattr(self, "_rgn"):
            self._rgn.end()  # a fit that ended without teardown: its optimizers' hooks removed
        self._rgn = AutoRGN(self.layer_lr)
        self._compiled = getattr(self, "_compiled", None) or CompileSession()
        self._compiled.end()  # a fit that ended without teardown: its limits back before a new one
        self._checkpoints = trainable_only.TrainableOnlySession()
        self._undo_on_load = _nothing  # module-level functions, not lambdas: ddp_spawn pickles the callback


def _ignore_optimizers(optimizers: list[Optimizer], configs: list[LRSchedulerConfig]) -> None:
    """The optimizer hook of a strategy with no param groups to add."""


def _nothing() -> None:
    """Nothing to undo."""


FlashBaseFinetuning = FinetuningStrategy
"""Flash's name for the base callback, so Flash callbacks only change their import line."""
