"""Which modules of a LightningModule are the pretrained ones that a strategy freezes.

Flash's ``modules_to_freeze()`` hook on the model names them first (its default return value ``None``
means "nothing"); otherwise ``attr_names`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from torch import nn

from finetune_strategies.errors import MissingModuleError


def frozen_roots(pl_module: pl.LightningModule, attr_names: Sequence[str]) -> list[tuple[str, nn.Module]] | None:
    """What to freeze, by name: ``pl_module.modules_to_freeze()`` if defined (``None`` if it returns None:
    nothing), else the modules named by ``attr_names``."""
    names = {id(m): n for n, m in pl_module.named_modules()}
    hook = getattr(pl_module, "modules_to_freeze", None)
    if callable(hook):
        found = hook()
        if found is None:
            return None
        modules = [found] if isinstance(found, nn.Module) else list(found)
        if not all(isinstance(m, nn.Module) for m in modules):
            raise MissingModuleError(
                f"{type(pl_module).__name__}.modules_to_freeze() must return a module, modules or None, got {found!r}."
            )
        return [(names.get(id(m), type(m).__name__), m) for m in modules]
    roots = []
    for attr in attr_names:
        try:
            module = pl_module.get_submodule(attr)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Module):
            raise MissingModuleError(
                f"{type(pl_module).__name__} has no module attribute `{attr}` to freeze. Give the model a "
                f"`{attr}` submodule, define `modules_to_freeze()` on it, or pass attr_names=[...] naming the "
                "modules to freeze."
            )
        roots.append((attr, module))
    return roots
