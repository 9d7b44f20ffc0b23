"""The built-in strategies. Each is a schedule on :class:`~finetune_strategies.core.callback.FinetuningStrategy`.

| name                  | frozen at start | unfrozen                                                        |
|-----------------------|-----------------|-----------------------------------------------------------------|
| `no_freeze`           | nothing         | -                                                               |
| `freeze`              | backbone        | never                                                           |
| `freeze_unfreeze`     | backbone        | all of it at `unfreeze_epoch`                                   |
| `unfreeze_milestones` | backbone        | last `num_layers` layers at `e1`, the rest at `e2`              |
| `gradual_unfreeze`    | backbone        | one more layer from the top every `every` epochs from `start_epoch` |
| `lp_ft`               | backbone (fully, features cached) | all of it at `probe_epochs`, at a small lr      |
| `phases`              | backbone        | what each phase names, at its epoch                             |
| `backbone_finetuning` | backbone        | all of it at `unfreeze_backbone_at_epoch`, lr ramped (Lightning's) |
| `surgical`            | backbone        | the chosen `layers` (a range, or selectors) at epoch 0, at the head's lr |

Every one takes the options of :class:`~finetune_strategies.core.callback.FinetuningStrategy`, such as
``layer_lr_decay`` for one param group per layer with geometrically decaying learning rates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer
from typing_extensions import Unpack, override

from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.groups import LrRamp
from finetune_strategies.core.options import StrategyOptions
from finetune_strategies.core.schedule import Phase, PhaseSpec, bind_phases, parse_phases
from finetune_strategies.errors import ScheduleError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.model.layers import Layer, LayerUnit
from finetune_strategies.model.selectors import check_selector
from finetune_strategies.strategies.registry import register_strategy
from finetune_strategies.validation import (
    check_bool,
    check_epoch,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)


def _label(roots: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(name for name, _ in roots)


@register_strategy("no_freeze", deepspeed_variant=True)
class NoFreeze(FinetuningStrategy):
    """Train everything from the first epoch.

    With ``layer_lr_decay`` or ``layer_lr="auto_rgn"`` the backbone's layers get their own param groups
    when the optimizer is built, at the lr of the group they were in times the layer's factor (1 without
    decay).
    """

    freezes: ClassVar[bool] = False

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze nothing."""

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        if self.layer_lr_decay is None and self.layer_lr is None:
            return []
        roots = self.find_modules_to_freeze(pl_module)
        return [Phase(0, _label(roots), tuple(m for _, m in roots))] if roots else []


@register_strategy("freeze", deepspeed_variant=True)
class Freeze(FinetuningStrategy):
    """Keep the backbone frozen for the whole run."""


@register_strategy("freeze_unfreeze", deepspeed_variant=True)
class FreezeUnfreeze(FinetuningStrategy):
    """Freeze the backbone, then unfreeze all of it at ``unfreeze_epoch`` (counted from 0).

    With ``monitor``, the backbone unfreezes when the metric plateaus, at ``unfreeze_epoch`` at the
    latest (``None``: no limit).

    Args:
        unfreeze_epoch: The epoch (from 0) at which the backbone unfreezes, the latest one with ``monitor``.
            ``None``: whenever the metric plateaus, which needs ``monitor``.
    """

    metadata_example = '("freeze_unfreeze", 7)'
    epoch_option: ClassVar[str] = "unfreeze_epoch"
    """The name users give the unfreeze epoch, for messages."""

    def __init__(self, unfreeze_epoch: int | None = 10, **options: Unpack[StrategyOptions]) -> None:
        super().__init__(**options)
        name = self.epoch_option
        if unfreeze_epoch is None and self.plateau is None:
            raise StrategySpecError(
                f"{name}=None means 'when the metric plateaus', which needs `monitor` (e.g. monitor='val_loss')."
            )
        self.unfreeze_epoch = None if unfreeze_epoch is None else check_epoch(name, unfreeze_epoch)

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"unfreeze_epoch": metadata}

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        roots = self.find_modules_to_freeze(pl_module)
        return [Phase(self.unfreeze_epoch, _label(roots), tuple(m for _, m in roots))] if roots else []


@register_strategy("lp_ft", deepspeed_variant=True)
class LPFT(FreezeUnfreeze):
    """LP-FT (Kumar et al., ICLR 2022): a linear probe, then full fine-tuning at a small learning rate.

    Until ``probe_epochs`` only the head trains: the backbone is fully frozen (``train_bn=False``), its
    BatchNorm layers normalise with their running statistics (``bn_eval=True``), and its features are
    computed once and cached (``cache_features=True``), so the probe costs little. From ``probe_epochs``
    the backbone trains too, at ``lr`` (default: group 0's lr / ``initial_denom_lr``). Starting the full
    fine-tuning from a trained head, rather than a random one, changes the pretrained features less.

    With ``monitor``, the probe ends when the metric plateaus, at ``probe_epochs`` at the latest
    (``None``: no limit). The cache needs a deterministic training transform: with data augmentation,
    pass ``cache_features=False`` (``lp_ft_deepspeed`` leaves it off: DeepSpeed keeps the pending backbone
    trainable, with masked gradients). ``train_bn=False`` also keeps the BatchNorm affine parameters at their
    pretrained values after the switch; ``train_bn=True`` (with ``cache_features=False``) trains them.

    Args:
        probe_epochs: How many epochs the linear probe runs: the epoch (from 0) at which full fine-tuning
            starts, the latest one with ``monitor``. ``None``: whenever the metric plateaus, which needs
            ``monitor``.
    """

    metadata_example = '("lp_ft", 5)'
    epoch_option: ClassVar[str] = "probe_epochs"
    option_defaults: ClassVar[dict[str, Any]] = {"train_bn": False, "bn_eval": True, "cache_features": True}

    def __init__(self, probe_epochs: int | None = 5, **options: Unpack[StrategyOptions]) -> None:
        defaults = self.changed_defaults(dict(options))
        settings: dict[str, Any] = {**defaults, **options}
        if settings["cache_features"] and (settings["train_bn"] or not settings["bn_eval"]):
            raise StrategySpecError(
                "lp_ft caches the frozen backbone's features, which needs train_bn=False and bn_eval=True (its "
                f"defaults), got train_bn={settings['train_bn']!r}, bn_eval={settings['bn_eval']!r}. Keep them, or "
                "pass cache_features=False."
            )
        super().__init__(probe_epochs, **settings)

    @classmethod
    @override
    def changed_defaults(cls, given: dict[str, Any]) -> dict[str, Any]:
        """:attr:`option_defaults`, without the cache when groups are pre-registered: DeepSpeed keeps the pending
        backbone trainable (its gradients masked), which the cache refuses."""
        return {**cls.option_defaults, "cache_features": not given.get("preregister_groups", False)}

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"probe_epochs": metadata}

    @property
    def probe_epochs(self) -> int | None:
        """The epoch at which full fine-tuning starts (at the latest, with ``monitor``)."""
        return self.unfreeze_epoch


@register_strategy("unfreeze_milestones", deepspeed_variant=True)
class UnfreezeMilestones(FinetuningStrategy):
    """Freeze the backbone; unfreeze its last ``num_layers`` layers at ``milestones[0]`` and the rest
    at ``milestones[1]``. What a layer is depends on ``layer_unit`` (default ``"param_modules"``, see
    :mod:`finetune_strategies.model.layers`).

    Args:
        milestones: Two epochs ``(e1, e2)`` (from 0, ``e1 < e2``): when the last ``num_layers`` layers
            unfreeze, and when the rest of the backbone does.
        num_layers: How many layers, counted from the top of the backbone, unfreeze at ``e1``.
    """

    metadata_example = '("unfreeze_milestones", ((3, 8), 2))'
    default_layer_unit: ClassVar[LayerUnit] = "param_modules"

    def __init__(
        self, milestones: Sequence[int] = (5, 10), num_layers: int = 5, **options: Unpack[StrategyOptions]
    ) -> None:
        super().__init__(**options)
        if not isinstance(milestones, (tuple, list)) or len(milestones) != 2:
            raise StrategySpecTypeError(f"`milestones` must be two epochs (e1, e2), e.g. (3, 8), got {milestones!r}.")
        first, second = (check_epoch(f"milestones[{i}]", e) for i, e in enumerate(milestones))
        if first >= second:
            raise StrategySpecError(f"milestones must satisfy e1 < e2, got ({first}, {second}).")
        self.milestones = (first, second)
        self.num_layers = check_positive_int("num_layers", num_layers)

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        if not isinstance(metadata, (tuple, list)) or len(metadata) != 2 or not isinstance(metadata[0], (tuple, list)):
            raise StrategySpecTypeError(
                f"unfreeze_milestones takes ((e1, e2), num_layers), e.g. {cls.metadata_example}, got {metadata!r}."
            )
        return {"milestones": tuple(metadata[0]), "num_layers": metadata[1]}

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        layers = self.backbone_layers(pl_module)
        if self.num_layers > len(layers):
            raise ScheduleError(
                f"unfreeze_milestones asks for the last {self.num_layers} layers, but the backbone has "
                f"only {len(layers)} layers counted as {self.layer_unit or self.default_layer_unit!r}."
            )
        split = len(layers) - self.num_layers
        last, rest = layers[split:], layers[:split]
        phases = [Phase(self.milestones[0], ", ".join(x.name for x in last), _modules(last), tuple(last))]
        if rest:
            phases.append(Phase(self.milestones[1], "rest of backbone", _modules(rest), tuple(rest)))
        return phases


@register_strategy("gradual_unfreeze", deepspeed_variant=True)
class GradualUnfreeze(FinetuningStrategy):
    """ULMFiT's gradual unfreezing: from ``start_epoch``, ``layers_per_step`` more layers from the top of
    the backbone unfreeze every ``every`` epochs, until all have. With ``layer_lr_decay=1/2.6`` it is
    ULMFiT's recipe (discriminative learning rates).

    Args:
        start_epoch: The epoch (from 0) at which the first layers, the top ones, unfreeze.
        every: How many epochs apart the unfreezes are.
        layers_per_step: How many layers each unfreeze brings.
    """

    metadata_example = '("gradual_unfreeze", 2)'

    def __init__(
        self,
        start_epoch: int = 1,
        every: int = 1,
        layers_per_step: int = 1,
        **options: Unpack[StrategyOptions],
    ) -> None:
        super().__init__(**options)
        self.start_epoch = check_epoch("start_epoch", start_epoch)
        self.every = check_positive_int("every", every)
        self.layers_per_step = check_positive_int("layers_per_step", layers_per_step)

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"start_epoch": metadata}

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        from_top = self.backbone_layers(pl_module)[::-1]
        steps = [from_top[i : i + self.layers_per_step] for i in range(0, len(from_top), self.layers_per_step)]
        return [
            Phase(self.start_epoch + i * self.every, ", ".join(x.name for x in step), _modules(step), tuple(step))
            for i, step in enumerate(steps)
        ]


@register_strategy("phases", deepspeed_variant=True)
class Phases(FinetuningStrategy):
    """An explicit schedule: a list of phases, each a dict with ``epoch`` (when it starts), ``modules``
    (selectors of what it unfreezes; everything still frozen when left out), and optionally ``lr``,
    ``layer_lr_decay``, ``name``, ``until`` (a plateau trigger that ends the stage the phase starts),
    ``lr_scheduler`` and ``reset_optimizer_state``. The strategy's own ``monitor`` options end every
    stage that has no ``until``, the stage before the first phase included. See
    :mod:`finetune_strategies.core.schedule` and :mod:`finetune_strategies.core.triggers`.

    Args:
        phases: The schedule: the phase dicts (or :class:`~finetune_strategies.core.schedule.PhaseSpec`), in
            the order they start.

    Example:
        >>> Phases([{"epoch": 2, "modules": ["backbone.layer4"], "lr": 1e-4}, {"epoch": 5}]).phases[1].epoch
        5
    """

    metadata_example = '("phases", [{"epoch": 2, "modules": ["backbone.layer4"]}, {"epoch": 5}])'

    def __init__(self, phases: list[dict[str, Any]], **options: Unpack[StrategyOptions]) -> None:
        super().__init__(**options)
        self.phases = parse_phases(phases)
        for index, spec in enumerate(self.phases):
            triggered = self.plateau is not None or (index > 0 and self.phases[index - 1].until is not None)
            if spec.epoch is None and not triggered:
                raise StrategySpecTypeError(
                    f"phases[{index}] needs 'epoch', the epoch (from 0) at which it starts, or a plateau trigger "
                    "on the stage before it: `until` on the phase before, or the strategy's `monitor`."
                )

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"phases": metadata}

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        return bind_phases(self.phases, pl_module, self.find_modules_to_freeze(pl_module))


def multiplicative(epoch: int) -> float:
    """The default ``lambda_func`` of :class:`BackboneFinetuningStrategy`, as Lightning's: the backbone's lr
    doubles every epoch (until it reaches the head's, with ``should_align``)."""
    return 2.0


@register_strategy("backbone_finetuning", deepspeed_variant=True)
class BackboneFinetuningStrategy(FinetuningStrategy):
    """Lightning's ``BackboneFinetuning`` as a strategy: the same schedule, the same learning rates.

    The backbone is frozen until ``unfreeze_backbone_at_epoch``; then all of it unfreezes in one param
    group at ``backbone_initial_lr``, else at group 0's lr times ``backbone_initial_ratio_lr``. At the start
    of every later epoch its lr becomes ``lambda_func(epoch + 1)`` times the lr of the epoch before, and
    with ``should_align`` no more than group 0's current lr (:class:`~finetune_strategies.core.groups.LrRamp`).
    Checked against Lightning's own callback: the same lr in every group every epoch, the same weights.

    ``initial_denom_lr`` has no effect here, as in Lightning (the ratio sets the start). ``lr`` is another
    name for ``backbone_initial_lr``. Beyond Lightning's callback: every option of the other strategies
    (``monitor``, ``layer_lr_decay``, whose groups each ramp and align to group 0's lr times their factor,
    ...), DeepSpeed (``backbone_finetuning_deepspeed``), and a mid-epoch resume that does not ramp twice.

    Args:
        unfreeze_backbone_at_epoch: The epoch (from 0) at which the backbone unfreezes.
        lambda_func: Called with ``epoch + 1`` at every epoch start after the unfreeze; returns the factor on
            the backbone's previous lr. Default: x2, as Lightning's.
        backbone_initial_ratio_lr: The backbone's lr at the unfreeze, as a fraction of group 0's.
        backbone_initial_lr: The backbone's lr at the unfreeze; ``None``: from ``backbone_initial_ratio_lr``.
        should_align: Cap the backbone's lr at group 0's current lr.
        verbose: Log group 0's and the backbone's lr at the unfreeze and at every epoch start after it.
        rounding: How many decimals ``verbose`` shows.
    """

    metadata_example = '("backbone_finetuning", 10)'

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable[[int], float] = multiplicative,
        backbone_initial_ratio_lr: float = 0.1,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        verbose: bool = False,
        rounding: int = 12,
        **options: Unpack[StrategyOptions],
    ) -> None:
        lr = options.get("lr")
        if lr is not None and backbone_initial_lr is not None:
            raise StrategySpecError(
                f"lr={lr!r} and backbone_initial_lr={backbone_initial_lr!r} both set the backbone's lr at the "
                "unfreeze: give one of them."
            )
        super().__init__(**options)
        self.unfreeze_backbone_at_epoch = check_epoch("unfreeze_backbone_at_epoch", unfreeze_backbone_at_epoch)
        if not callable(lambda_func):
            raise StrategySpecTypeError(
                "`lambda_func` must be a function of the epoch (counted from 1) that returns the factor on the "
                f"backbone's lr, e.g. `lambda epoch: 1.5`, got {lambda_func!r}."
            )
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = check_positive_float("backbone_initial_ratio_lr", backbone_initial_ratio_lr)
        self.backbone_initial_lr = (
            None if backbone_initial_lr is None else check_positive_float("backbone_initial_lr", backbone_initial_lr)
        )
        self.should_align = check_bool("should_align", should_align)
        self.verbose = check_bool("verbose", verbose)
        self.rounding = check_non_negative_int("rounding", rounding)

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        return {"unfreeze_backbone_at_epoch": metadata}

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        roots = self.find_modules_to_freeze(pl_module)
        if not roots:
            return []
        ramp = LrRamp(self.lambda_func, self.should_align, self.backbone_initial_ratio_lr)
        modules = tuple(m for _, m in roots)
        epoch = self.unfreeze_backbone_at_epoch
        return [Phase(epoch, _label(roots), modules, lr=self.backbone_initial_lr, lr_ramp=ramp)]

    @override
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        super().finetune_function(pl_module, epoch, optimizer)
        groups = self._groups
        set_now = [(groups.plans[i].name, lr) for i, (_, lr, at) in sorted(groups.ramped.items()) if at == epoch]
        if self.verbose and set_now:
            lrs = ", ".join(f"{name} lr: {round(lr, self.rounding)}" for name, lr in set_now)
            rank_zero_info(f"Epoch {epoch}: current lr: {round(optimizer.param_groups[0]['lr'], self.rounding)}, {lrs}")


SurgicalLayers = str | int | list[str]  # str first: the command line keeps "1:3" as text, not base-60
"""What :class:`SurgicalFinetuning` tunes: a position, a slice of positions as a string, or module selectors."""

_POSITION = re.compile(r"^\s*-?\d+\s*$")
_RANGE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")
_NUMERIC = re.compile(r"^[\s\d:+-]*$")
_LAYERS_FORMS = (
    "a position in the backbone's layers (an int, negative counts from the top: 0, -1), a slice of positions "
    "as a string ('0:2', '-1:', '1:-1'), or a list of module selectors inside the frozen modules "
    "(['backbone.layer1'])"
)
_SHOWN_LAYERS = 12


def parse_layers(layers: Any) -> int | slice | tuple[str, ...]:
    """``layers`` of :class:`SurgicalFinetuning`, checked: a position, a slice of positions (no step), or a
    tuple of module selectors. A string that is neither an int nor a slice is one selector."""
    if isinstance(layers, bool) or not isinstance(layers, (int, str, list, tuple)):
        raise StrategySpecTypeError(f"surgical `layers` must be {_LAYERS_FORMS}; got {layers!r}.")
    if isinstance(layers, int):
        return layers
    if isinstance(layers, str):
        if _POSITION.match(layers):
            return int(layers)
        found = _RANGE.match(layers)
        if found:
            start, stop = (None if part is None else int(part) for part in found.groups())
            return slice(start, stop)
        if _NUMERIC.match(layers):
            raise StrategySpecError(
                f"surgical `layers` {layers!r} is not a slice of positions: give 'start:stop' (either may be left "
                "out, no step: the layers are one contiguous range), e.g. '0:2' or '-1:'."
            )
        layers = [layers]
    if not layers:
        raise StrategySpecError(f"surgical `layers` is an empty list: it must be {_LAYERS_FORMS}.")
    selectors = []
    for selector in layers:
        if not isinstance(selector, str):
            raise StrategySpecTypeError(
                f"surgical `layers` as a list holds module selectors (strings), got {selector!r} in {layers!r}."
            )
        try:
            selectors.append(check_selector(selector))
        except ScheduleError as error:
            raise StrategySpecError(f"surgical `layers`: {error}") from None
    return tuple(selectors)


def describe_layers(layers: Sequence[Layer]) -> str:
    """``0: name, 1: name, ...`` (the first and last ones of a long list), for messages."""
    shown = [f"{i}: {layer.name}" for i, layer in enumerate(layers)]
    if len(shown) > _SHOWN_LAYERS:
        half = _SHOWN_LAYERS // 2
        shown = [*shown[:half], f"... ({len(shown) - _SHOWN_LAYERS} more)", *shown[-half:]]
    return ", ".join(shown) or "none"


def select_positions(choice: int | slice, count: int, what: str) -> list[int]:
    """The positions of ``count`` layers that ``choice`` names: one contiguous, non-empty range. Raises
    :class:`ScheduleError` for a position or slice bound outside ``-count..count-1`` (``..count`` for a
    slice's stop), or an empty slice; ``what`` says what was given and what the layers are."""
    if isinstance(choice, int):
        if not -count <= choice < count:
            minutes, seconds = divmod(abs(choice), 60)
            hint = (
                f" (YAML 1.1 reads an unquoted {'-' if choice < 0 else ''}{minutes}:{seconds} as the base-60 number "
                f"{choice}: quote a slice in YAML, '{minutes}:{seconds}')"
                if minutes and seconds < 60
                else ""
            )
            raise ScheduleError(
                f"{what}: position {choice} is out of range; give a position from {-count} to {count - 1}, "
                f"or a slice such as '0:2'.{hint}"
            )
        return [choice % count]
    bounds = [b for b in (choice.start, choice.stop) if b is not None]
    if any(not -count <= b <= count for b in bounds):
        raise ScheduleError(
            f"{what}: the slice '{_slice_text(choice)}' goes past the layers; its bounds must be from {-count} "
            f"to {count}."
        )
    positions = list(range(count))[choice]
    if not positions:
        raise ScheduleError(f"{what}: the slice '{_slice_text(choice)}' selects no layer; give a non-empty range.")
    return positions


def _slice_text(choice: slice) -> str:
    return f"{'' if choice.start is None else choice.start}:{'' if choice.stop is None else choice.stop}"


@register_strategy("surgical", deepspeed_variant=True)
class SurgicalFinetuning(FinetuningStrategy):
    """Surgical fine-tuning (Lee et al., ICLR 2023): only some of the backbone's layers train, with the head.

    The backbone is frozen as by every strategy; at epoch 0 one phase unfreezes the chosen ``layers`` and
    they train for the whole run; the rest of the backbone stays frozen. The paper's finding: the layers
    that should change depend on the shift between the pretraining and the target data - the first block
    for input-level shifts (corruptions, a new sensor), the middle ones for feature-level shifts, the last
    ones for output-level shifts (new labels) - and tuning only them can beat full fine-tuning.
    :func:`~finetune_strategies.choose.suggest_layers` chooses them with short probe runs.

    The chosen layers train at the head's lr (group 0's): ``initial_denom_lr`` defaults to ``1.0`` here, not
    ``10.0``, because the method tunes a subset of the model at one learning rate. Give ``lr`` or
    ``initial_denom_lr`` to change it. The ``phases`` strategy does the same with
    ``{"strategy": "phases", "phases": [{"epoch": 0, "modules": [...]}], "initial_denom_lr": 1.0}``.

    Args:
        layers: What trains besides the head: a position in the backbone's layers (those of
            :meth:`~finetune_strategies.core.callback.FinetuningStrategy.backbone_layers`, in ``layer_unit``,
            bottom to top; negative counts from the top), a slice of positions as a string (``"0:2"``,
            ``"-1:"``; one contiguous range, bounds inside the layers), or a list of module selectors
            (:mod:`~finetune_strategies.model.selectors`) inside the frozen modules. Checked before
            anything trains.
    """

    metadata_example = '("surgical", {"layers": "0:2"})'
    option_defaults: ClassVar[dict[str, Any]] = {"initial_denom_lr": 1.0}

    def __init__(self, layers: SurgicalLayers, **options: Unpack[StrategyOptions]) -> None:
        super().__init__(**{**self.changed_defaults(dict(options)), **options})
        self.choice = parse_layers(layers)
        self.layers = layers

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        if isinstance(metadata, Mapping):
            extra = sorted(set(metadata) - {"layers"})
            if "layers" not in metadata or extra:
                raise StrategySpecTypeError(
                    f"surgical metadata is {{'layers': ...}} (or the layers alone), got {dict(metadata)!r}. Give "
                    "options in the dict form: {'strategy': 'surgical', 'layers': '0:2', 'train_bn': False}."
                )
            return {"layers": metadata["layers"]}
        return {"layers": metadata}

    def chosen_layers(self, pl_module: pl.LightningModule) -> list[Layer]:
        """The layers that train besides the head, bottom to top; :class:`ScheduleError` if there are none,
        or ``layers`` names a position or module outside the frozen ones."""
        what = f"surgical layers={self.layers!r}"
        if isinstance(self.choice, tuple):
            spec = PhaseSpec(epoch=0, modules=self.choice)
            try:
                (phase,) = bind_phases([spec], pl_module, self.find_modules_to_freeze(pl_module))
            except ScheduleError as error:
                raise ScheduleError(f"{what}: {error}") from None
            return list(phase.layers)
        layers = self.backbone_layers(pl_module)
        unit = self.layer_unit or self.default_layer_unit
        if not layers:
            raise ScheduleError(
                f"{what}: the frozen modules ({self.find_frozen(pl_module).describe()}) have no layers to choose from."
            )
        where = f"{what} (the backbone's {len(layers)} layers counted as {unit!r}: {describe_layers(layers)})"
        return [layers[i] for i in select_positions(self.choice, len(layers), where)]

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        chosen = self.chosen_layers(pl_module)
        label = ", ".join(layer.name for layer in chosen)
        return [Phase(0, label, _modules(chosen), tuple(chosen))]


def _modules(layers: Sequence[Any]) -> tuple[nn.Module, ...]:
    return tuple(module for layer in layers for module in layer.modules)
