"""The base callback that every fine-tuning strategy builds on.

:class:`FinetuningStrategy` extends Lightning's ``BaseFinetuning`` and fixes what it gets wrong:

* optimizer membership is tested by identity, not by value;
* unfrozen parameters go to exactly one optimizer, in a new param group that the LR schedulers
  learn about (see :mod:`finetune_strategies.schedulers`);
* resuming after an unfreeze makes the unfrozen modules trainable again;
* ``train_bn=False`` keeps BatchNorm frozen after an unfreeze too, and ``bn_eval=True`` runs frozen
  BatchNorm layers on their running statistics;
* with ``preregister_groups=True`` (the ``*_deepspeed`` strategies) the optimizer never changes
  shape: every phase gets a param group with lr 0 when the optimizer is built, and the phase is
  switched on by setting its lr.

A built-in strategy is only a schedule: it overrides :meth:`FinetuningStrategy.unfreeze_phases`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, NamedTuple, TypedDict

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.core.optimizer import _configure_optimizers
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from finetune_strategies import distributed
from finetune_strategies.errors import (
    ConfigurationError,
    MissingModuleError,
    ScheduleError,
    StrategySpecTypeError,
)
from finetune_strategies.feature_cache import CacheStats, FeatureCache, check_deterministic, check_frozen
from finetune_strategies.schedulers import follow_group_zero, pad_to_groups, schedulers_of
from finetune_strategies.validation import (
    check_bool,
    check_names,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

Modules = nn.Module | Iterable[Any]


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


class Phase(NamedTuple):
    """Modules that become trainable at the start of ``epoch`` (counted from 0)."""

    epoch: int
    label: str
    modules: tuple[nn.Module, ...]


def flatten(modules: Modules) -> list[nn.Module]:
    """Modules that own parameters directly, or leaves, from a module or nested iterables of them."""
    return BaseFinetuning.flatten_modules(modules)


def _direct_parameters(modules: Iterable[nn.Module], train_bn: bool) -> list[nn.Parameter]:
    seen: set[int] = set()
    params = []
    for module in modules:
        if isinstance(module, _BatchNorm) and not train_bn:
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


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
        preregister_groups: Give every phase its param group (lr 0) when the optimizer is built,
            instead of adding groups when phases start. Needed by DeepSpeed, whose optimizer cannot
            take new groups. Under DeepSpeed the pending parameters keep ``requires_grad=True`` and
            their gradients are zeroed until their phase starts.
        cache_features: Until the first phase starts, compute each training sample's features
            once and reuse them in later epochs (see :mod:`finetune_strategies.feature_cache`).
            Needs the frozen modules fully frozen (``train_bn=False``), BatchNorm in eval mode
            (``bn_eval=True``), no active dropout and a deterministic training transform; refuses
            otherwise. The cache is dropped when the first phase starts.
        cache_max_bytes: Memory bound of the feature cache (default 2 GiB).
    """

    metadata_example: ClassVar[str] = ""
    """How the ``(name, metadata)`` spec of this strategy looks, for error messages."""

    _trainer: pl.Trainer | None
    _phases: list[Phase]
    _module_names: dict[int, str]  # id(module) -> qualified name in the LightningModule
    _unfrozen: list[tuple[str, bool]]  # (module name, train_bn) made trainable so far, for resume
    _started: set[int]  # indices of phases that have started
    _eval_bn: set[_BatchNorm]  # frozen BatchNorm layers kept in eval mode
    _pending_groups: dict[int, int]  # phase index -> param group index (preregister_groups)
    _grad_masks: dict[int, list[RemovableHandle]]
    _original_configure_optimizers: Callable[[], Any] | None
    _caches: dict[str, FeatureCache]
    cache_stats: dict[str, CacheStats]
    """Per frozen module, what its feature cache held and served (filled when a cache is dropped)."""

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
        self._reset()

    @classmethod
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        """Turn the metadata of a ``(name, metadata)`` spec into constructor keywords."""
        raise StrategySpecTypeError(
            f"{cls.__name__} takes no metadata: give it by name alone, got metadata {metadata!r}."
        )

    # ------------------------------------------------------------------ schedule
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        """The schedule: which modules become trainable at which epoch. Built-ins override this."""
        return []

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze the modules found by :meth:`find_modules_to_freeze`."""
        for _, module in self.find_modules_to_freeze(pl_module):
            self.freeze(module, train_bn=self.train_bn)
            if self.bn_eval:
                self._eval_bn.update(m for m in module.modules() if isinstance(m, _BatchNorm))

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Start every phase scheduled for ``epoch`` that has not started (a mid-epoch resume has)."""
        for index, phase in enumerate(self._phases):
            if phase.epoch == epoch and index not in self._started:
                self._start_phase(index, phase, optimizer)

    def find_modules_to_freeze(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Module]]:
        """``pl_module.modules_to_freeze()`` if defined, else the modules named by ``attr_names``."""
        names = {id(m): n for n, m in pl_module.named_modules()}
        hook = getattr(pl_module, "modules_to_freeze", None)
        if callable(hook):
            found = hook()
            modules = [found] if isinstance(found, nn.Module) else list(found)
            if not all(isinstance(m, nn.Module) for m in modules):
                raise MissingModuleError(
                    f"{type(pl_module).__name__}.modules_to_freeze() must return a module or modules, got {found!r}."
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

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[Any]) -> list[Any]:
        """Drop the parameters that ``optimizer`` already holds, compared by identity."""
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        kept: list[Any] = []
        for param in params:
            if id(param) not in present:
                present.add(id(param))
                kept.append(param)
        return kept

    def unfreeze_and_add_param_group(  # type: ignore[override]
        self,
        modules: Modules,
        optimizer: Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Make ``modules`` trainable and put their parameters in a new param group.

        The group's lr is ``lr``, or group 0's current lr divided by ``initial_denom_lr``. LR
        schedulers then drive it like group 0, scaled by that ratio.
        """
        flat = flatten(modules)
        was_frozen = {id(p) for p in _direct_parameters(flat, train_bn) if not p.requires_grad}
        self._make_trainable(flat, train_bn)
        candidates = _direct_parameters(flat, train_bn)
        params = self.filter_on_optimizer(optimizer, candidates)
        kept = {id(p) for p in params}
        already = [p for p in candidates if id(p) in was_frozen and id(p) not in kept]
        if already:
            rank_zero_warn(
                f"{len(already)} parameter(s) being unfrozen were already in the optimizer, so they train "
                "with their existing group's lr. Build the optimizer from trainable parameters only, "
                "e.g. `Adam(filter(lambda p: p.requires_grad, self.parameters()))`."
            )
        if params:
            group_lr = float(lr) if lr is not None else optimizer.param_groups[0]["lr"] / initial_denom_lr
            optimizer.add_param_group({"params": params, "lr": group_lr})

    def unfreeze_and_extend_param_group(self, modules: Modules, optimizer: Optimizer, train_bn: bool = True) -> None:
        """Flash's helper. Flash appended to group 0, which breaks resume; here the parameters get a
        new group that always has group 0's learning rate."""
        self.unfreeze_and_add_param_group(modules, optimizer, initial_denom_lr=1.0, train_bn=train_bn)

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
        self._module_names = {id(m): n for n, m in pl_module.named_modules()}
        self.freeze_before_training(pl_module)
        self._phases = self.unfreeze_phases(pl_module)
        if self.preregister_groups and stage == "fit":
            self._wrap_configure_optimizers(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap_configure_optimizers(pl_module)
        if not 0 <= self.optimizer_index < len(trainer.optimizers):
            raise ScheduleError(
                f"optimizer_index={self.optimizer_index}, but configure_optimizers returned "
                f"{len(trainer.optimizers)} optimizer(s)."
            )
        last_phase = max((p.epoch for p in self._phases), default=-1)
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= last_phase:
            rank_zero_warn(
                f"{type(self).__name__} starts a phase at epoch {last_phase}, but max_epochs="
                f"{trainer.max_epochs} ends training before it (epochs count from 0)."
            )
        super().on_fit_start(trainer, pl_module)  # rebuilds param groups on resume

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replay a resumed run's unfreezes here: DeepSpeed restores callback state only after
        # on_fit_start, and every strategy has restored it by now.
        for name, train_bn in self._unfrozen:
            self._make_trainable([pl_module.get_submodule(name)], train_bn)
        for index in self._started:
            self._ungate(index)
        distributed.sync_ddp(trainer, stale=bool(self._unfrozen))  # DDP wrapped before the replay
        optimizer = trainer.optimizers[self.optimizer_index]
        for scheduler in schedulers_of([c.scheduler for c in trainer.lr_scheduler_configs], optimizer):
            pad_to_groups(scheduler, optimizer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[self.optimizer_index]
        count = len(optimizer.param_groups)
        self._call_finetune_function(pl_module, trainer.current_epoch, optimizer)
        distributed.sync_ddp(trainer)  # DDP must all-reduce what was just unfrozen
        for index in range(count, len(optimizer.param_groups)):
            self._follow_group_zero(trainer, optimizer, index)
        if self.cache_features:
            self._update_caches(pl_module)
        if not self.preregister_groups:  # remember the groups by parameter name, for resume
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self._internal_optimizer_metadata[self.optimizer_index] = [
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": [names[id(p)] for p in g["params"]],
                }
                for g in optimizer.param_groups
            ]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for module in self._eval_bn:
            if module.training:
                module.eval()
        for name, cache in self._caches.items():
            if not cache.checked:  # after the BatchNorm layers were put in eval mode above
                check_deterministic(name, cache.module)
                cache.checked = True
            cache.active = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for cache in self._caches.values():
            cache.active = False  # validation and prediction always run the module

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unwrap_configure_optimizers(pl_module)
        self._drop_caches()
        for handle in self._grad_masks.values():
            for h in handle:
                h.remove()
        self._grad_masks = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "unfrozen_modules": [list(entry) for entry in self._unfrozen],
            "started_phases": sorted(self._started),
            "strategy": type(self).__name__,
            "schedule": [[phase.epoch, phase.label] for phase in self._phases],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._unfrozen = [(str(n), bool(t)) for n, t in state_dict.get("unfrozen_modules", [])]
        self._started = set(state_dict.get("started_phases", []))

    # ------------------------------------------------------------------ internals
    def _reset(self) -> None:
        self._internal_optimizer_metadata = {}
        self._trainer = None
        self._phases = []
        self._module_names = {}
        self._unfrozen = []
        self._started = set()
        self._eval_bn = set()
        self._pending_groups = {}
        self._grad_masks = {}
        self._original_configure_optimizers = None
        self._caches = {}
        self.cache_stats = {}

    def _call_finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # Flash's signature has a fourth argument, the optimizer index.
        parameters = inspect.signature(self.finetune_function).parameters
        if len(parameters) >= 4:
            self.finetune_function(pl_module, epoch, optimizer, self.optimizer_index)  # type: ignore[call-arg]
        else:
            self.finetune_function(pl_module, epoch, optimizer)

    def _make_trainable(self, modules: Iterable[nn.Module], train_bn: bool) -> None:
        for module in modules:
            name = self._module_names.get(id(module))
            if name is not None and (name, train_bn) not in self._unfrozen:
                self._unfrozen.append((name, train_bn))
            for sub in flatten(module):
                if isinstance(sub, _BatchNorm):
                    sub.track_running_stats = True
                    if sub in self._eval_bn:
                        self._eval_bn.discard(sub)
                        sub.train(True)
                    if not train_bn:
                        continue
                for param in sub.parameters(recurse=False):
                    param.requires_grad = True

    def _start_phase(self, index: int, phase: Phase, optimizer: Optimizer) -> None:
        if not self.preregister_groups:
            self.unfreeze_and_add_param_group(phase.modules, optimizer, self.lr, self.initial_denom_lr, self.train_bn)
            self._started.add(index)
            return
        group_index = self._pending_groups[index]
        group_lr = self.lr if self.lr is not None else optimizer.param_groups[0]["lr"] / self.initial_denom_lr
        optimizer.param_groups[group_index]["lr"] = group_lr
        self._make_trainable(phase.modules, self.train_bn)
        self._ungate(index)
        self._started.add(index)
        assert self._trainer is not None
        self._follow_group_zero(self._trainer, optimizer, group_index)

    def _follow_group_zero(self, trainer: pl.Trainer, optimizer: Optimizer, index: int) -> None:
        first = optimizer.param_groups[0]
        lr = optimizer.param_groups[index]["lr"]
        # Group 0 can sit at lr 0 (a warm-up start); then scale from its initial lr instead.
        reference = first["lr"] if first["lr"] > 0 else first.get("initial_lr", 0.0)
        ratio = lr / reference if reference > 0 else 1.0 / self.initial_denom_lr
        for scheduler in schedulers_of([c.scheduler for c in trainer.lr_scheduler_configs], optimizer):
            follow_group_zero(scheduler, optimizer, index, ratio)

    # --- feature cache ---
    def _update_caches(self, pl_module: pl.LightningModule) -> None:
        if self._started:
            self._drop_caches()
            return
        for cache in self._caches.values():
            cache.strict = True  # a later epoch: every input must have been seen before
            cache.checked = False
        for name, module in self.find_modules_to_freeze(pl_module):
            check_frozen(name, module)
            if name not in self._caches:
                self._caches[name] = FeatureCache(name, module, self.cache_max_bytes)

    def _drop_caches(self) -> None:
        for name, cache in self._caches.items():
            self.cache_stats[name] = cache.close()
        self._caches = {}

    # --- pre-registered groups (DeepSpeed) ---
    def _wrap_configure_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        original = pl_module.configure_optimizers
        self._original_configure_optimizers = original

        @functools.wraps(original)
        def configure_optimizers() -> Any:
            config = original()
            optimizers, raw_schedulers, _ = _configure_optimizers(config)  # type: ignore[arg-type]
            schedulers = [s["scheduler"] if isinstance(s, dict) else s for s in raw_schedulers]
            optimizer = optimizers[self.optimizer_index]
            self._add_pending_groups(optimizer, schedulers)
            self._gate_pending(trainer, optimizer)
            return config

        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]

    def _unwrap_configure_optimizers(self, pl_module: pl.LightningModule) -> None:
        if self._original_configure_optimizers is not None:
            del pl_module.configure_optimizers  # drop the instance attribute, back to the class method
            self._original_configure_optimizers = None

    def _add_pending_groups(self, optimizer: Optimizer, schedulers: list[Any]) -> None:
        schedulers = schedulers_of(schedulers, optimizer)
        for index, phase in enumerate(self._phases):
            candidates = _direct_parameters(flatten(phase.modules), self.train_bn)
            params = self.filter_on_optimizer(optimizer, candidates)
            if not params:
                continue
            optimizer.add_param_group({"params": params, "lr": 0.0})
            group_index = len(optimizer.param_groups) - 1
            self._pending_groups[index] = group_index
            for scheduler in schedulers:
                follow_group_zero(scheduler, optimizer, group_index, 0.0)

    def _gate_pending(self, trainer: pl.Trainer, optimizer: Optimizer) -> None:
        """Keep pending phases from training: zeroed gradients under DeepSpeed (whose optimizer only
        holds parameters that require grad when it is built), else ``requires_grad=False``."""
        mask = isinstance(trainer.strategy, DeepSpeedStrategy)
        for index, group_index in self._pending_groups.items():
            if index in self._started:
                continue
            params = optimizer.param_groups[group_index]["params"]
            for param in params:
                param.requires_grad = mask
            if mask:
                hooks = [p.register_hook(torch.zeros_like) for p in params]
                self._grad_masks[index] = hooks

    def _ungate(self, index: int) -> None:
        for handle in self._grad_masks.pop(index, []):
            handle.remove()


FlashBaseFinetuning = FinetuningStrategy
"""Flash's name for the base callback, so Flash callbacks only change their import line."""
