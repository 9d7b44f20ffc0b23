"""What is measured: the variants (the minimal loop, plain Lightning, Lightning's ``BackboneFinetuning``
and this library's strategies), the paired comparisons that judge the targets, and the sessions
(sets of variants run in lockstep) that those comparisons need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lightning.pytorch.callbacks import BackboneFinetuning, Callback

from benchmarks.stats import Comparison
from benchmarks.workload import Backbone
from finetune_strategies import resolve_strategy

MinimalMode = Literal["frozen", "frozen_bn", "full"]

FLOOR_OF_MODE: dict[MinimalMode, str] = {
    "frozen": "minimal.frozen",
    "frozen_bn": "minimal.frozen_bn",
    "full": "minimal.full",
}

UNFREEZE_EPOCH = 1
HEAD_ONLY = {"train_bn": False, "bn_eval": True}  # nothing in the backbone trains while frozen
ULMFIT_DECAY = 1 / 2.6  # ULMFiT's discriminative learning rates
PHASES = [{"epoch": UNFREEZE_EPOCH, "modules": ["backbone.layer4"], "lr": 1e-4}, {"epoch": UNFREEZE_EPOCH + 1}]


@dataclass(frozen=True)
class Variant:
    """One row group of the table.

    ``phases`` names what trains in each epoch (one phase per epoch); ``floors`` gives, per phase, the
    minimal-loop variant that does the same math, or ``None``. A minimal-loop variant has a ``mode``;
    a Lightning variant has ``callback`` (``None`` inside means plain ``fit``). ``alone`` is False for
    a variant that only exists to be paired (the minimal loop's second copy).
    """

    key: str
    label: str
    group: Literal["minimal", "lightning", "ours"]
    settings: str
    phases: tuple[str, ...]
    floors: tuple[str | None, ...]
    mode: MinimalMode | None = None
    callback: Callable[[], Callback | None] | None = None
    backbone: Backbone = "cnn"
    alone: bool = True


def _minimal(mode: MinimalMode, settings: str, key: str | None = None, label: str = "minimal PyTorch loop") -> Variant:
    return Variant(
        key or FLOOR_OF_MODE[mode],
        label,
        "minimal",
        settings,
        (mode,),
        (FLOOR_OF_MODE[mode],),
        mode=mode,
        alone=key is None,
    )


def _backbone_finetuning() -> Callback:
    # Lightning's defaults except the unfreeze epoch; train_bn=True is its default.
    return BackboneFinetuning(unfreeze_backbone_at_epoch=UNFREEZE_EPOCH, train_bn=True, verbose=False)


def _ours(
    key: str,
    label: str,
    settings: str,
    phases: tuple[str, ...],
    floors: tuple[str | None, ...],
    make: Callable[[], Callback],
    backbone: Backbone = "cnn",
) -> Variant:
    return Variant(f"ours.{key}", label, "ours", settings, phases, floors, callback=make, backbone=backbone)


def _gradual(decay: float | None) -> Variant:
    """``gradual_unfreeze`` from epoch 1, one timm block per epoch; with ``decay``, per-layer lrs (ULMFiT)."""
    options = {**HEAD_ONLY, "layer_lr_decay": decay}
    return _ours(
        "gradual_unfreeze" + ("" if decay is None else ".layer_lr_decay"),
        "gradual_unfreeze",
        f"start_epoch={UNFREEZE_EPOCH}, one timm block per epoch"
        + ("" if decay is None else f", layer_lr_decay=1/{1 / decay:.1f} (ULMFiT)")
        + ", train_bn=False, bn_eval=True",
        ("frozen", "top block"),
        (FLOOR_OF_MODE["frozen"], None),
        lambda: resolve_strategy(("gradual_unfreeze", UNFREEZE_EPOCH), **options),
    )


def variants() -> list[Variant]:
    """Every variant, baselines first."""
    frozen, frozen_bn, full = (FLOOR_OF_MODE[m] for m in ("frozen", "frozen_bn", "full"))
    head_only = "train_bn=False, bn_eval=True"
    milestones = ("unfreeze_milestones", ((UNFREEZE_EPOCH, UNFREEZE_EPOCH + 1), 2))
    return [
        _minimal("frozen", "backbone in eval mode under no_grad; head forward, backward, step"),
        _minimal(
            "frozen",
            "a second copy of the frozen loop, paired with the first: the calibration",
            key="minimal.frozen.copy",
            label="minimal PyTorch loop, copy",
        ),
        _minimal("frozen_bn", "backbone frozen but BatchNorm affine trains (train_bn=True): backward through it"),
        _minimal("full", "everything trains"),
        Variant(
            "lightning.fit",
            "Lightning fit, no callback",
            "lightning",
            "everything trains",
            ("full",),
            (full,),
            callback=lambda: None,
        ),
        Variant(
            "lightning.backbone_finetuning",
            "Lightning BackboneFinetuning",
            "lightning",
            f"unfreeze_backbone_at_epoch={UNFREEZE_EPOCH}, train_bn=True",
            ("frozen", "unfrozen"),
            (frozen_bn, full),
            callback=_backbone_finetuning,
        ),
        _ours("no_freeze", "no_freeze", "defaults", ("full",), (full,), lambda: resolve_strategy("no_freeze")),
        _ours("freeze", "freeze", head_only, ("frozen",), (frozen,), lambda: resolve_strategy("freeze", **HEAD_ONLY)),
        _ours(
            "freeze_unfreeze.train_bn",
            "freeze_unfreeze",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, train_bn=True (as BackboneFinetuning)",
            ("frozen", "unfrozen"),
            (frozen_bn, full),
            lambda: resolve_strategy(("freeze_unfreeze", UNFREEZE_EPOCH)),
        ),
        _ours(
            "freeze_unfreeze",
            "freeze_unfreeze",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, {head_only}",
            ("frozen", "unfrozen"),
            (frozen, full),
            lambda: resolve_strategy(("freeze_unfreeze", UNFREEZE_EPOCH), **HEAD_ONLY),
        ),
        _ours(
            "unfreeze_milestones",
            "unfreeze_milestones",
            f"milestones=({UNFREEZE_EPOCH}, {UNFREEZE_EPOCH + 1}), 2 timm blocks, {head_only}",
            ("frozen", "partial", "unfrozen"),
            (frozen, None, full),
            lambda: resolve_strategy(milestones, layer_unit="blocks", **HEAD_ONLY),
        ),
        _gradual(None),
        _gradual(ULMFIT_DECAY),
        _ours(
            "phases",
            "phases",
            f"layer4 at epoch {UNFREEZE_EPOCH} (lr 1e-4), the rest at {UNFREEZE_EPOCH + 1}, {head_only}",
            ("frozen", "layer4", "unfrozen"),
            (frozen, None, full),
            lambda: resolve_strategy(("phases", PHASES), **HEAD_ONLY),
        ),
        _ours(
            "freeze_unfreeze_deepspeed",
            "freeze_unfreeze_deepspeed",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, {head_only}, groups pre-registered (lr 0)",
            ("frozen", "unfrozen"),
            (frozen, full),
            lambda: resolve_strategy(("freeze_unfreeze_deepspeed", UNFREEZE_EPOCH), **HEAD_ONLY),
        ),
        _ours(
            "freeze_unfreeze_deepspeed.layer_lr_decay",
            "freeze_unfreeze_deepspeed",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, layer_lr_decay=0.8, {head_only}, one group per timm block "
            "pre-registered (lr 0)",
            ("frozen", "unfrozen"),
            (frozen, full),
            lambda: resolve_strategy(("freeze_unfreeze_deepspeed", UNFREEZE_EPOCH), layer_lr_decay=0.8, **HEAD_ONLY),
        ),
        _ours(
            "vit.no_freeze",
            "no_freeze",
            "ViT, one param group",
            ("full",),
            (None,),
            lambda: resolve_strategy("no_freeze"),
            backbone="vit",
        ),
        _ours(
            "vit.no_freeze.layer_lr_decay",
            "no_freeze",
            "ViT, layer_lr_decay=1.0: one param group per timm block (same lrs, same math)",
            ("full",),
            (None,),
            lambda: resolve_strategy("no_freeze", layer_lr_decay=1.0),
            backbone="vit",
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
