"""``lora``: parameter-efficient fine-tuning with adapters that ``peft`` injects into the frozen backbone.

When a fit is set up (before the optimizer is built and before DDP wraps the model) the strategy
injects LoRA adapters (or any injectable peft tuner given as ``peft_config``) into the modules it
freezes, with ``peft.inject_adapter_in_model``. The base weights stay frozen; the adapters, the
``modules_to_save`` and the head train from the first epoch. The schedule is:

* phase 0, ``lora`` (epoch 0): the adapters and ``modules_to_save``, in a param group named ``lora``
  at the lr of the group ``configure_optimizers`` gave them (group 0's, for a model that builds its
  optimizer over the trainable parameters), or ``lr``;
* with ``unfreeze_epoch`` or ``monitor``, a later phase that unfreezes the base weights as
  ``freeze_unfreeze`` does (group 0's lr divided by ``initial_denom_lr``, or ``lr``), adapters included:
  LoRA, then everything; with ``monitor`` it starts when the metric plateaus (at ``unfreeze_epoch`` at
  the latest).

Checkpoints keep only what trained (``save_trainable_only`` defaults to True; see
:mod:`finetune_strategies.checkpointing.trainable_only`).
:func:`~finetune_strategies.model.adapters.merge_adapters` folds the adapters into the base weights after training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
from torch import nn
from typing_extensions import Unpack, override

from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.options import StrategyOptions
from finetune_strategies.core.schedule import Phase
from finetune_strategies.errors import AdapterError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.model.adapters import (
    config_json,
    default_targets,
    exact_pattern,
    inject,
    mark_of,
    require_peft,
    resolve_targets,
    saved_copy_originals,
)
from finetune_strategies.model.batchnorm import flatten
from finetune_strategies.model.layers import Layer
from finetune_strategies.model.selectors import check_selector, is_inside, select_modules
from finetune_strategies.strategies.registry import register_strategy
from finetune_strategies.validation import check_bool, check_epoch, check_int, check_positive_float

ADAPTER_PHASE = "lora"
LORA_SETTINGS = ("r", "alpha", "dropout", "use_dora")


def _selectors(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    selectors = (value,) if isinstance(value, str) else value
    if not isinstance(selectors, (list, tuple)) or not selectors or not all(isinstance(s, str) for s in selectors):
        raise StrategySpecTypeError(
            f"`{name}` must be a module selector or a non-empty list of them, e.g. 're:.*(qkv|fc1|fc2)$' or "
            f"['backbone.blocks.*.attn.qkv'], got {value!r}."
        )
    for selector in selectors:
        check_selector(selector)
    return tuple(selectors)


def _peft_config(value: Any) -> Any:
    """A peft config instance, or one built from a dict with ``peft_type`` (for YAML and the CLI)."""
    peft = require_peft()
    if isinstance(value, peft.PeftConfig):
        return value
    if isinstance(value, Mapping) and "peft_type" in value:
        try:
            return peft.PeftConfig.from_peft_type(**dict(value))
        except (KeyError, TypeError, ValueError) as error:
            raise StrategySpecError(f"`peft_config` {dict(value)!r} is not a peft config: {error!r}") from None
    raise StrategySpecTypeError(
        "`peft_config` must be a peft config, e.g. peft.IA3Config(...), or a dict with its 'peft_type', e.g. "
        f"{{'peft_type': 'LOHA', 'r': 8}}, got {value!r}."
    )


@register_strategy("lora", deepspeed_variant=True)
class Lora(FinetuningStrategy):
    """LoRA adapters in the frozen backbone, trained with the head; optionally everything later.

    Args:
        r: Rank of the adapters (>= 1). Default 8.
        alpha: LoRA's scaling numerator: the adapters' output is scaled by ``alpha / r``. Default ``r``
            (scaling 1).
        dropout: Dropout on the adapters' input, in [0, 1). Default 0.
        target_modules: The layers to adapt: selectors of the core's language
            (``"backbone.blocks.*.attn.qkv"``, ``"re:.*(qkv|fc1|fc2)$"``, ``"backbone.blocks[-2:]"``) or, as
            in peft, bare layer names (``["qkv", "fc1"]``). A selected module that is not a layer stands
            for the layers inside it. Default: every ``nn.Linear`` (outside ``nn.MultiheadAttention``) of the
            backbone, for a timm ViT its ``qkv``, ``proj``, ``fc1`` and ``fc2``; for a backbone without
            any (a ConvNet), every ungrouped convolution.
        use_dora: Weight-decomposed LoRA (DoRA). Default False.
        modules_to_save: Modules of the backbone (selectors) that train whole from the start, such as a
            final norm. Unlike peft's own ``modules_to_save`` they train in place (no copy), so an
            exported backbone keeps its plain names.
        unfreeze_epoch: If given, the base weights unfreeze at this epoch too. With ``monitor`` (an option
            of every strategy) they unfreeze when the metric plateaus, at ``unfreeze_epoch`` at the latest
            (``None``: no limit).
        peft_config: Any peft tuner that ``peft.inject_adapter_in_model`` supports (``LoraConfig`` with
            settings not listed here, ``IA3Config``, ``LoHaConfig``, ...), or a dict with its
            ``peft_type``. Its own ``target_modules`` are used unless ``target_modules`` is given.
            ``r``, ``alpha``, ``dropout`` and ``use_dora`` then belong in it.
        **options: The options of every strategy (:class:`~finetune_strategies.core.callback.FinetuningStrategy`).
            ``lr`` sets the lr of the ``lora`` group and of the unfrozen base.
    """

    metadata_example = '("lora", {"r": 8, "alpha": 16})'
    default_save_trainable_only: ClassVar[bool] = True
    injects_adapters: ClassVar[bool] = True
    """The strategy changes the model's modules (``describe_schedule`` plans on a copy)."""

    def __init__(
        self,
        r: int | None = None,
        alpha: float | None = None,
        dropout: float | None = None,
        target_modules: str | Sequence[str] | None = None,
        use_dora: bool | None = None,
        modules_to_save: str | Sequence[str] | None = None,
        unfreeze_epoch: int | None = None,
        peft_config: Any = None,
        **options: Unpack[StrategyOptions],
    ) -> None:
        super().__init__(**options)
        require_peft()
        given = {"r": r, "alpha": alpha, "dropout": dropout, "use_dora": use_dora}
        self.peft_config = None if peft_config is None else _peft_config(peft_config)
        if self.peft_config is not None and any(v is not None for v in given.values()):
            raise StrategySpecTypeError(
                f"lora: {[k for k, v in given.items() if v is not None]} are LoRA settings; with peft_config=... "
                "set them in the peft config instead."
            )
        self.r = check_int("r", 8 if r is None else r, minimum=1)
        self.alpha = check_positive_float("alpha", self.r if alpha is None else alpha)
        self.dropout = check_positive_float("dropout", 0.0 if dropout is None else dropout, allow_zero=True)
        if self.dropout >= 1:
            raise StrategySpecError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        self.use_dora = check_bool("use_dora", bool(use_dora) if use_dora is None else use_dora)
        self.target_modules = _selectors("target_modules", target_modules)
        self.modules_to_save = _selectors("modules_to_save", modules_to_save)
        self.unfreeze_epoch = None if unfreeze_epoch is None else check_epoch("unfreeze_epoch", unfreeze_epoch)

    @classmethod
    @override
    def kwargs_from_metadata(cls, metadata: Any) -> dict[str, Any]:
        """``("lora", 8)`` is the rank; ``("lora", {"r": 8, "alpha": 16})`` any keywords."""
        if metadata is None:
            return {}
        if isinstance(metadata, Mapping):
            return dict(metadata)
        return {"r": metadata}

    # ------------------------------------------------------------------ the adapters
    def settings(self) -> str:
        """The settings that decide the adapters, as text (recorded on the modules that carry them)."""
        own: dict[str, Any] = {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "use_dora": self.use_dora}
        chosen: dict[str, Any] = own if self.peft_config is None else {"peft_config": config_json(self.peft_config)}
        chosen.update(target_modules=self.target_modules, modules_to_save=self.modules_to_save)
        return json.dumps(chosen, sort_keys=True, default=list)

    def lora_config(self, targets: Sequence[str]) -> Any:
        """The peft config to inject for exactly the layers ``targets`` (names within one frozen module)."""
        peft = require_peft()
        pattern = exact_pattern(targets)
        if self.peft_config is None:
            return peft.LoraConfig(
                r=self.r,
                lora_alpha=self.alpha,
                lora_dropout=self.dropout,
                use_dora=self.use_dora,
                target_modules=pattern,
            )
        config = self.peft_config.to_dict()
        if self.target_modules is not None or config.get("target_modules") is None:
            config["target_modules"] = pattern
        return peft.PeftConfig.from_peft_type(**config)

    def attach_adapters(self, pl_module: pl.LightningModule) -> None:
        """Inject the adapters into the frozen modules, unless they carry this strategy's already (a second
        fit of the same model, ``validate`` after ``fit``)."""
        frozen = self.find_frozen(pl_module)
        roots, head = list(frozen.roots), [name for name, _ in frozen.head]
        origins = {mark.origin for _, module in roots if (mark := mark_of(module)) is not None}
        if origins == {self.settings()}:
            return
        if origins:
            raise AdapterError(
                f"lora: {type(pl_module).__name__} already carries adapters from other lora settings "
                f"({', '.join(sorted(origins))}); this strategy's are {self.settings()}. Fit it with those settings, "
                "or call finetune_strategies.merge_adapters(model) first to fold them in."
            )
        own_targets = None if self.peft_config is None else self.peft_config.target_modules
        targets: list[str] | None
        if own_targets is not None and self.target_modules is None:
            targets = None  # peft matches the config's own target_modules
        elif self.target_modules is not None:
            targets = resolve_targets(pl_module, roots, self.target_modules)
        else:  # a head inside the frozen modules trains whole: no adapters in it
            targets = [t for t in default_targets(pl_module, roots) if not is_inside(t, head)]
        saved = [name for name, _ in self.saved_modules(pl_module)] + head
        clash = [t for t in targets or () for s in saved if t == s or t.startswith(s + ".")]
        if clash:
            raise AdapterError(
                f"lora: {', '.join(clash)} would be both adapted and trained whole (modules_to_save, or the "
                "model's head); pick one."
            )
        for root, _ in roots:
            start = len(root) + 1 if root else 0
            mine = None if targets is None else [t[start:] for t in targets if is_inside(t, [root])]
            if mine is None:
                inject(pl_module, root, self.peft_config, self.settings())
            elif mine:
                inject(pl_module, root, self.lora_config(mine), self.settings())

    def saved_modules(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Module]]:
        """The ``modules_to_save``, which must lie in the frozen modules."""
        chosen = select_modules(pl_module, self.modules_to_save or ())
        roots = [name for name, _ in self.find_modules_to_freeze(pl_module)]
        outside = [name for name, _ in chosen if not is_inside(name, roots)]
        if outside:
            raise AdapterError(
                f"lora: modules_to_save {', '.join(outside)} lies outside the frozen modules ({', '.join(roots)}), "
                "so it trains whole anyway. Name modules inside them."
            )
        return chosen

    def trained_modules(self, pl_module: pl.LightningModule) -> tuple[list[nn.Module], list[nn.Module]]:
        """(modules whose own parameters train from the start: adapters and ``modules_to_save``; the base
        modules the unfreeze phase thaws)."""
        adapters: list[nn.Module] = []
        for _, module in self.find_modules_to_freeze(pl_module):
            mark = mark_of(module)
            trainable = {id(module.get_parameter(name)) for name in (mark.trainable if mark else ())}
            adapters += [m for m in flatten(module) if _owns_only(m, trainable)]
        for _, module in self.saved_modules(pl_module):
            adapters += flatten(module)
        chosen = {id(m) for m in adapters}
        unused = {id(m) for original in saved_copy_originals(pl_module) for m in original.modules()}
        unused |= {id(m) for _, head in self.find_frozen(pl_module).head for m in head.modules()}  # trains already
        base = [
            m
            for _, root in self.find_modules_to_freeze(pl_module)
            for m in flatten(root)
            if id(m) not in chosen and id(m) not in unused and any(True for _ in m.parameters(recurse=False))
        ]
        return list({id(m): m for m in adapters}.values()), base

    # ------------------------------------------------------------------ the schedule
    @override
    def prepare(self, pl_module: pl.LightningModule) -> None:
        self.attach_adapters(pl_module)
        super().prepare(pl_module)

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze the backbone; then what peft made trainable (the adapters, and biases if its config asks)
        and the ``modules_to_save`` train again."""
        super().freeze_before_training(pl_module)
        for _, root in self.find_modules_to_freeze(pl_module):
            mark = mark_of(root)
            for name in mark.trainable if mark else ():
                root.get_parameter(name).requires_grad_(True)
        for _, module in self.saved_modules(pl_module):
            module.requires_grad_(True)

    @override
    def unfreeze_phases(self, pl_module: pl.LightningModule) -> list[Phase]:
        adapters, base = self.trained_modules(pl_module)
        phases = [Phase(0, ADAPTER_PHASE, tuple(adapters), (Layer(ADAPTER_PHASE, tuple(adapters)),))]
        if self.unfreeze_epoch is not None or self.plateau is not None:
            roots = self.find_modules_to_freeze(pl_module)
            label = ", ".join(name for name, _ in roots)
            phases.append(Phase(self.unfreeze_epoch, label, tuple(m for _, m in roots), (Layer(label, tuple(base)),)))
        return phases


def _owns_only(module: nn.Module, trainable: set[int]) -> bool:
    own = [id(p) for p in module.parameters(recurse=False)]
    return bool(own) and all(p in trainable for p in own)
