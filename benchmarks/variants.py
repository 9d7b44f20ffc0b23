"""The variants measured side by side: the minimal loop, plain Lightning, Lightning's
``BackboneFinetuning``, and this library's strategies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lightning.pytorch.callbacks import BackboneFinetuning, Callback

from finetune_strategies import resolve_strategy

MinimalMode = Literal["frozen", "frozen_bn", "full"]

FLOOR_OF_MODE: dict[MinimalMode, str] = {
    "frozen": "minimal.frozen",
    "frozen_bn": "minimal.frozen_bn",
    "full": "minimal.full",
}

UNFREEZE_EPOCH = 1
HEAD_ONLY = {"train_bn": False, "bn_eval": True}  # nothing in the backbone trains while frozen


@dataclass(frozen=True)
class Variant:
    """One row group of the table.

    ``phases`` names what trains in each epoch (one phase per epoch); ``floors`` gives, per phase, the
    minimal-loop variant that does the same math, or ``None``. A minimal-loop variant has a ``mode``;
    a Lightning variant has ``callback`` (``None`` inside means plain ``fit``).
    """

    key: str
    label: str
    group: Literal["minimal", "lightning", "ours"]
    settings: str
    phases: tuple[str, ...]
    floors: tuple[str | None, ...]
    mode: MinimalMode | None = None
    callback: Callable[[], Callback | None] | None = None


def _minimal(mode: MinimalMode, settings: str) -> Variant:
    return Variant(
        f"minimal.{mode}", "minimal PyTorch loop", "minimal", settings, (mode,), (FLOOR_OF_MODE[mode],), mode=mode
    )


def _backbone_finetuning() -> Callback:
    # Lightning's defaults except the unfreeze epoch; train_bn=True is its default.
    return BackboneFinetuning(unfreeze_backbone_at_epoch=UNFREEZE_EPOCH, train_bn=True, verbose=False)


def variants() -> list[Variant]:
    """Every variant, baselines first."""
    frozen, frozen_bn, full = (FLOOR_OF_MODE[m] for m in ("frozen", "frozen_bn", "full"))
    milestones = ("unfreeze_milestones", ((UNFREEZE_EPOCH, UNFREEZE_EPOCH + 1), 2))
    return [
        _minimal("frozen", "backbone in eval mode under no_grad; head forward, backward, step"),
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
        Variant(
            "ours.no_freeze",
            "no_freeze",
            "ours",
            "defaults",
            ("full",),
            (full,),
            callback=lambda: resolve_strategy("no_freeze"),
        ),
        Variant(
            "ours.freeze",
            "freeze",
            "ours",
            "train_bn=False, bn_eval=True",
            ("frozen",),
            (frozen,),
            callback=lambda: resolve_strategy("freeze", **HEAD_ONLY),
        ),
        Variant(
            "ours.freeze_unfreeze.train_bn",
            "freeze_unfreeze",
            "ours",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, train_bn=True (as BackboneFinetuning)",
            ("frozen", "unfrozen"),
            (frozen_bn, full),
            callback=lambda: resolve_strategy(("freeze_unfreeze", UNFREEZE_EPOCH)),
        ),
        Variant(
            "ours.freeze_unfreeze",
            "freeze_unfreeze",
            "ours",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, train_bn=False, bn_eval=True",
            ("frozen", "unfrozen"),
            (frozen, full),
            callback=lambda: resolve_strategy(("freeze_unfreeze", UNFREEZE_EPOCH), **HEAD_ONLY),
        ),
        Variant(
            "ours.unfreeze_milestones",
            "unfreeze_milestones",
            "ours",
            f"milestones=({UNFREEZE_EPOCH}, {UNFREEZE_EPOCH + 1}), 2 timm blocks, train_bn=False, bn_eval=True",
            ("frozen", "partial", "unfrozen"),
            (frozen, None, full),
            callback=lambda: resolve_strategy(milestones, layer_unit="blocks", **HEAD_ONLY),
        ),
        Variant(
            "ours.freeze_unfreeze_deepspeed",
            "freeze_unfreeze_deepspeed",
            "ours",
            f"unfreeze_epoch={UNFREEZE_EPOCH}, train_bn=False, bn_eval=True, groups pre-registered (lr 0)",
            ("frozen", "unfrozen"),
            (frozen, full),
            callback=lambda: resolve_strategy(("freeze_unfreeze_deepspeed", UNFREEZE_EPOCH), **HEAD_ONLY),
        ),
    ]
