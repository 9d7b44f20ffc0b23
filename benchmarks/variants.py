"""What is measured: the variants (the minimal loop, plain Lightning, Lightning's ``BackboneFinetuning``
and this library's strategies), the paired comparisons that judge the targets, and the sessions
(sets of variants run in lockstep) that those comparisons need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from lightning.pytorch.callbacks import BackboneFinetuning, Callback

from benchmarks.stats import Comparison
from benchmarks.workload import Backbone
from finetune_strategies import resolve_strategy

MinimalMode = Literal["frozen", "frozen_bn", "full"]

UNFREEZE_EPOCH = 1
HEAD_ONLY: dict[str, Any] = {"train_bn": False, "bn_eval": True}  # nothing in the backbone trains while frozen
HEAD_ONLY_TEXT = "train_bn=False, bn_eval=True"
ULMFIT_DECAY = 1 / 2.6  # ULMFiT's discriminative learning rates
PHASES = [{"epoch": UNFREEZE_EPOCH, "modules": ["backbone.layer4"], "lr": 1e-4}, {"epoch": UNFREEZE_EPOCH + 1}]


@dataclass(frozen=True)
class Variant:
    """One row group of the table.

    ``phases`` names what trains in each epoch (one phase per epoch). A minimal-loop variant has a ``mode``; a
    Lightning variant has ``callback`` (``None`` inside means plain ``fit``). ``bn_trains``: BatchNorm's affine
    parameters train in the frozen phase. ``alone`` is False for a variant that only exists to be paired (the
    minimal loop's second copy).
    """

    key: str
    label: str
    group: Literal["minimal", "lightning", "ours"]
    settings: str
    phases: tuple[str, ...]
    mode: MinimalMode | None = None
    callback: Callable[[], Callback | None] | None = None
    backbone: Backbone = "cnn"
    bn_trains: bool = False
    alone: bool = True

    @property
    def floors(self) -> tuple[str | None, ...]:
        """Per phase, the key of the minimal-loop variant doing the same math, or None (none does; no minimal
        loop runs the ViT)."""
        frozen = "frozen_bn" if self.bn_trains else "frozen"
        modes = {"frozen": frozen, "frozen_bn": "frozen_bn", "unfrozen": "full", "full": "full"}
        if self.backbone == "vit":
            return (None,) * len(self.phases)
        return tuple(f"minimal.{modes[p]}" if p in modes else None for p in self.phases)


def _minimal(mode: MinimalMode, settings: str, copy: bool = False) -> Variant:
    key, label = f"minimal.{mode}" + (".copy" if copy else ""), "minimal PyTorch loop" + (", copy" if copy else "")
    return Variant(key, label, "minimal", settings, (mode,), mode=mode, alone=not copy)


def _ours(
    key: str,
    settings: str,
    phases: tuple[str, ...],
    spec: str | tuple[str, Any],
    backbone: Backbone = "cnn",
    bn_trains: bool = False,
    **options: Any,
) -> Variant:
    """This library's ``spec`` (with ``options``), labelled by its strategy name."""
    label = spec if isinstance(spec, str) else spec[0]
    make = partial(resolve_strategy, spec, **options)
    return Variant(
        f"ours.{key}", label, "ours", settings, phases, callback=make, backbone=backbone, bn_trains=bn_trains
    )


def _gradual(decay: float | None) -> Variant:
    """``gradual_unfreeze`` from epoch 1, one timm block per epoch; with ``decay``, per-layer lrs (ULMFiT)."""
    return _ours(
        "gradual_unfreeze" + ("" if decay is None else ".layer_lr_decay"),
        f"start_epoch={UNFREEZE_EPOCH}, one timm block per epoch"
        + ("" if decay is None else f", layer_lr_decay=1/{1 / decay:.1f} (ULMFiT)")
        + f", {HEAD_ONLY_TEXT}",
        ("frozen", "top block"),
        ("gradual_unfreeze", UNFREEZE_EPOCH),
        layer_lr_decay=decay,
        **HEAD_ONLY,
    )


def variants() -> list[Variant]:
    """Every variant, baselines first."""
    two_phases, unfreeze = ("frozen", "unfrozen"), ("freeze_unfreeze", UNFREEZE_EPOCH)
    deepspeed = ("freeze_unfreeze_deepspeed", UNFREEZE_EPOCH)
    milestones = ("unfreeze_milestones", ((UNFREEZE_EPOCH, UNFREEZE_EPOCH + 1), 2))
    return [
        _minimal("frozen", "backbone in eval mode under no_grad; head forward, backward, step"),
        _minimal("frozen", "a second copy of the frozen loop, paired with the first: the calibration", copy=True),
        _minimal("frozen_bn", "backbone frozen but BatchNorm affine trains (train_bn=True): backward through it"),
        _minimal("full", "everything trains"),
        Variant(
            "lightning.fit",
            "Lightning fit, no callback",
            "lightning",
            "everything trains",
            ("full",),
            callback=lambda: None,
        ),
        Variant(
            "lightning.backbone_finetuning",
            "Lightning BackboneFinetuning",
            "lightning",
            f"unfreeze_backbone_at_epoch={UNFREEZE_EPOCH}, train_bn=True",
            two_phases,
            # Lightning's defaults except the unfreeze epoch; train_bn=True is its default.
            callback=lambda: BackboneFinetuning(
                unfreeze_backbone_at_epoch=UNFREEZE_EPOCH, train_bn=True, verbose=False
            ),
            bn_trains=True,
        ),
        _ours("no_freeze", "defaults", ("full",), "no_freeze"),
        _ours("freeze", HEAD_ONLY_TEXT, ("frozen",), "freeze", **HEAD_ONLY),
        _ours(
            "freeze_unfreeze.train_bn",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, train_bn=True (as BackboneFinetuning)",
            two_phases,
            unfreeze,
            bn_trains=True,
        ),
        _ours(
            "freeze_unfreeze", f"unfreeze_epoch={UNFREEZE_EPOCH}, {HEAD_ONLY_TEXT}", two_phases, unfreeze, **HEAD_ONLY
        ),
        _ours(
            "unfreeze_milestones",
            f"milestones=({UNFREEZE_EPOCH}, {UNFREEZE_EPOCH + 1}), 2 timm blocks, {HEAD_ONLY_TEXT}",
            ("frozen", "partial", "unfrozen"),
            milestones,
            layer_unit="blocks",
            **HEAD_ONLY,
        ),
        _gradual(None),
        _gradual(ULMFIT_DECAY),
        _ours(
            "phases",
            f"layer4 at epoch {UNFREEZE_EPOCH} (lr 1e-4), the rest at {UNFREEZE_EPOCH + 1}, {HEAD_ONLY_TEXT}",
            ("frozen", "layer4", "unfrozen"),
            ("phases", PHASES),
            **HEAD_ONLY,
        ),
        _ours(
            "freeze_unfreeze_deepspeed",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, {HEAD_ONLY_TEXT}, groups pre-registered (lr 0)",
            two_phases,
            deepspeed,
            **HEAD_ONLY,
        ),
        _ours(
            "freeze_unfreeze_deepspeed.layer_lr_decay",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, layer_lr_decay=0.8, {HEAD_ONLY_TEXT}, one group per timm block "
            "pre-registered (lr 0)",
            two_phases,
            deepspeed,
            layer_lr_decay=0.8,
            **HEAD_ONLY,
        ),
        _ours("vit.no_freeze", "ViT, one param group", ("full",), "no_freeze", backbone="vit"),
        _ours(
            "vit.no_freeze.layer_lr_decay",
            "ViT, layer_lr_decay=1.0: one param group per timm block (same lrs, same math)",
            ("full",),
            "no_freeze",
            backbone="vit",
            layer_lr_decay=1.0,
        ),
    ]


FROZEN_TARGET = "frozen-phase step <= 1.10x minimal loop"
NO_FREEZE_TARGET = "no_freeze <= 1.02x plain Lightning fit"
BACKBONE_FINETUNING_TARGET = "freeze_unfreeze <= 1.02x BackboneFinetuning (same settings)"
LAYER_GROUPS_TARGET = "per-layer param groups <= 1.03x one group"
CALIBRATION = "calibration: the minimal loop against its own copy"


def comparisons(all_variants: list[Variant] | None = None) -> list[Comparison]:
    """Every paired comparison: each frozen phase of ours against the minimal loop doing the same math,
    ``no_freeze`` against plain ``fit``, ``freeze_unfreeze`` against ``BackboneFinetuning`` in both
    phases, per-layer groups against one group, and the calibration (the minimal loop against itself)."""
    found = all_variants if all_variants is not None else variants()
    found_keys = {v.key for v in found}
    result = [Comparison(CALIBRATION, "minimal.frozen.copy", "minimal.frozen", "frozen", "frozen", None)]
    for variant in found:
        if variant.group == "ours" and "frozen" in variant.phases:
            floor = variant.floors[variant.phases.index("frozen")]
            if floor is not None and floor in found_keys:
                mode = floor.split(".")[1]
                result.append(Comparison(FROZEN_TARGET, variant.key, floor, "frozen", mode, 1.10))
    result.append(Comparison(NO_FREEZE_TARGET, "ours.no_freeze", "lightning.fit", "full", "full", 1.02))
    for phase in ("frozen", "unfrozen"):
        result.append(
            Comparison(
                BACKBONE_FINETUNING_TARGET,
                "ours.freeze_unfreeze.train_bn",
                "lightning.backbone_finetuning",
                phase,
                phase,
                1.02,
            )
        )
    result.append(
        Comparison(LAYER_GROUPS_TARGET, "ours.vit.no_freeze.layer_lr_decay", "ours.vit.no_freeze", "full", "full", 1.03)
    )
    return [c for c in result if c.a in found_keys and c.b in found_keys]


@dataclass(frozen=True)
class Session:
    """Variants that run in lockstep, in ring order; each for its first ``epochs[key]`` phases."""

    name: str
    keys: tuple[str, ...]
    epochs: dict[str, int]


def group_sessions(all_variants: list[Variant], all_comparisons: list[Comparison]) -> list[Session]:
    """One session per set of variants that comparisons connect (so that both sides of every pair run in
    the same ring), each variant running as many epochs as its latest compared phase needs. Named after
    its first variant."""
    by_key = {v.key: v for v in all_variants}
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    epochs: dict[str, int] = {}
    for c in all_comparisons:
        parent[root(c.a)] = root(c.b)
        for key, phase in ((c.a, c.phase), (c.b, c.b_phase)):
            epochs[key] = max(epochs.get(key, 0), by_key[key].phases.index(phase) + 1)
    members: dict[str, list[str]] = {}
    for variant in all_variants:  # table order within a session
        if variant.key in epochs:
            members.setdefault(root(variant.key), []).append(variant.key)
    return [Session(keys[0], tuple(keys), {k: epochs[k] for k in keys}) for keys in members.values()]
