"""Which modules of a LightningModule are the pretrained ones that a strategy freezes.

In this order, the first that answers:

1. Flash's ``modules_to_freeze()`` hook on the model (its default return value ``None`` means "nothing");
2. ``attr_names``, module selectors (:mod:`~finetune_strategies.model.selectors`): names, dotted paths,
   globs, positions and slices, ``re:`` patterns;
3. a ``backbone`` attribute (Lightning's ``BackboneFinetuning`` and Flash's convention);
4. the anatomy of the one timm, torchvision or ``transformers`` model the LightningModule holds
   (:func:`~finetune_strategies.model.anatomy.find_anatomy`): its backbone, with its head left to train.

:func:`check_frozen` refuses what cannot be meant, before any step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from finetune_strategies.errors import MissingModuleError, ScheduleError, SelectorError
from finetune_strategies.model.anatomy import Anatomy, find_anatomy
from finetune_strategies.model.selectors import is_inside, select_modules

Named = tuple[str, nn.Module]


@dataclass(frozen=True)
class FrozenModules:
    """What a strategy freezes: the ``roots`` with everything in them, except the ``head``.

    Attributes:
        roots: ``(name, module)`` of each frozen module.
        head: ``(name, module)`` of modules inside a root that keep training from the start (the head of
            a timm or torchvision model that the anatomy found); empty otherwise.
        found_by: How they were found, in words.
        anatomy: The anatomy, when it was used.
    """

    roots: tuple[Named, ...]
    head: tuple[Named, ...] = ()
    found_by: str = "attr_names"
    anatomy: Anatomy | None = None

    @property
    def names(self) -> list[str]:
        """The roots' names."""
        return [name for name, _ in self.roots]

    def describe(self) -> str:
        """What is frozen and how it was found, in one line."""
        if self.anatomy is not None:
            return f"{self.anatomy.describe()} (found by the anatomy)"
        return f"freezes {', '.join(f'`{n}`' for n in self.names) or 'nothing'} ({self.found_by})"

    def parameters(self) -> list[nn.Parameter]:
        """The frozen parameters, once each, in the roots' order (the head's left out)."""
        head = {id(p) for _, module in self.head for p in module.parameters()}
        seen: set[int] = set()
        params = []
        for _, root in self.roots:
            for param in root.parameters():
                if id(param) not in head and id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        return params

    def buffers(self) -> list[nn.Module]:
        """The modules whose buffers are the frozen part's: the roots' modules outside the head."""
        head = {id(m) for _, module in self.head for m in module.modules()}
        return [m for _, root in self.roots for m in root.modules() if id(m) not in head]


def _hooked(pl_module: pl.LightningModule) -> FrozenModules | None:
    names = {id(m): n for n, m in pl_module.named_modules()}
    found = pl_module.modules_to_freeze()  # type: ignore[operator]
    if found is None:
        return None
    modules = [found] if isinstance(found, nn.Module) else list(found)
    if not all(isinstance(m, nn.Module) for m in modules):
        raise MissingModuleError(
            f"{type(pl_module).__name__}.modules_to_freeze() must return a module, modules or None, got {found!r}."
        )
    roots = tuple((names.get(id(m), type(m).__name__), m) for m in modules)
    return FrozenModules(roots, found_by="modules_to_freeze()")


def _selected(pl_module: pl.LightningModule, attr_names: Sequence[str]) -> FrozenModules:
    try:
        roots = select_modules(pl_module, attr_names)
    except SelectorError as error:
        raise MissingModuleError(
            f"{type(pl_module).__name__} has no module to freeze as attr_names={list(attr_names)!r} asks: {error} "
            f"Name modules that exist, or leave attr_names out to let the strategy find the backbone."
        ) from None
    return FrozenModules(tuple(roots), found_by=f"attr_names={list(attr_names)!r}")


def find_frozen(pl_module: pl.LightningModule, attr_names: Sequence[str] | None = None) -> FrozenModules | None:
    """What to freeze (see the module docstring); ``None`` when ``modules_to_freeze()`` returns None."""
    if callable(getattr(pl_module, "modules_to_freeze", None)):
        return _hooked(pl_module)
    if attr_names is not None:
        return _selected(pl_module, attr_names)
    backbone = getattr(pl_module, "backbone", None)
    if isinstance(backbone, nn.Module):
        return FrozenModules((("backbone", backbone),), found_by="the `backbone` attribute")
    anatomy = find_anatomy(pl_module)
    root = pl_module.get_submodule(anatomy.backbone) if anatomy.backbone else pl_module
    head = tuple((name, pl_module.get_submodule(name)) for name in anatomy.head if is_inside(name, [anatomy.backbone]))
    return FrozenModules(((anatomy.backbone, root),), head, "the anatomy", anatomy)


def frozen_roots(pl_module: pl.LightningModule, attr_names: Sequence[str] | None = None) -> list[Named] | None:
    """The frozen modules' ``(name, module)`` (:func:`find_frozen`), or ``None``."""
    frozen = find_frozen(pl_module, attr_names)
    return None if frozen is None else list(frozen.roots)


# ------------------------------------------------------------------------------------------- refusals
def _module_of(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0]


def _suggestion(pl_module: pl.LightningModule, frozen: FrozenModules) -> str:
    try:
        anatomy = find_anatomy(pl_module)
    except MissingModuleError:
        anatomy = None
    inside = [h for h in anatomy.head if is_inside(h, frozen.names)] if anatomy else []
    if anatomy is not None and inside:
        return (
            f" The head {', '.join(f'`{h}`' for h in inside)} of the {anatomy.family} {anatomy.architecture} is "
            f"inside them. Leave attr_names out to let the strategy freeze the backbone and train the head, or "
            f"name only the backbone's modules."
        )
    return " Freeze only the pretrained backbone (attr_names=[...] or modules_to_freeze()), so that a head trains."


def check_frozen(
    pl_module: pl.LightningModule, frozen: FrozenModules, thawed_at_start: Iterable[nn.Parameter], owner: str
) -> None:
    """Refuse, before any step, what cannot be meant.

    Raises :class:`~finetune_strategies.errors.ScheduleError` when the frozen modules hold every parameter
    that would train and no phase unfreezes any at the start (BatchNorm's affine parameters, which
    ``train_bn`` keeps training, do not count). Warns when a frozen module holds no parameters, and when a
    parameter is shared between a frozen module and one that trains (tied weights), naming both.
    """
    for name, root in frozen.roots:
        if not any(True for _ in root.parameters()):
            rank_zero_warn(
                f"{owner}: `{name}` ({type(root).__name__}) holds no parameters, so freezing it freezes nothing. "
                "Name the modules that hold the pretrained weights."
            )
    frozen_ids = {id(p) for p in frozen.parameters()}
    named = list(pl_module.named_parameters(remove_duplicate=False))
    trains = [n for n, p in named if p.requires_grad and id(p) not in frozen_ids]
    by_id: dict[int, list[str]] = {}
    for name, param in named:
        by_id.setdefault(id(param), []).append(name)
    head_names = [name for name, _ in frozen.head]
    for ident in frozen_ids:
        names = by_id.get(ident, [])
        inside = [
            n for n in names if is_inside(_module_of(n), frozen.names) and not is_inside(_module_of(n), head_names)
        ]
        outside = [n for n in names if n not in inside]
        if inside and outside:
            rank_zero_warn(
                f"{owner}: `{outside[0]}` is the same parameter as `{inside[0]}` (tied weights), so freezing "
                f"`{_module_of(inside[0]) or type(pl_module).__name__}` freezes it in `{_module_of(outside[0])}` too, "
                "until it is unfrozen. Untie them (for a transformers model, tie_word_embeddings=False) if "
                f"`{_module_of(outside[0])}` should train from the start."
            )
    if frozen_ids and not trains and not any(True for _ in thawed_at_start):
        raise ScheduleError(
            f"{owner} freezes {', '.join(f'`{n}`' for n in frozen.names)}, which hold every parameter of "
            f"{type(pl_module).__name__} that would train, so nothing trains before the first unfreeze (with "
            f"train_bn=True, only BatchNorm's affine parameters would).{_suggestion(pl_module, frozen)}"
        )
