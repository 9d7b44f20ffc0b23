"""The module paths of 0.1, before the subpackages: each still imports, as the module that holds its code now.

Saved configs, pickled checkpoints and user code name classes by module path
(``finetune_strategies.lora.Lora``, ``finetune_strategies.schedule.PhaseSpec``). A finder on
``sys.meta_path`` answers an import of an old path with the new module itself (not a copy), loaded when
first asked for. ``finetune_strategies.strategies`` and ``finetune_strategies.cli`` are packages now and
export what those modules did.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

from typing_extensions import override

PACKAGE = "finetune_strategies"

MOVED: dict[str, str] = {
    "adapters": "model.adapters",
    "base": "core.callback",
    "batchnorm": "model.batchnorm",
    "checkpoint_io": "checkpointing.checkpoint_io",
    "checkpoints": "core.resume",
    "compat": "core.compat",
    "demo.command": "cli.demo",
    "distributed": "core.distributed",
    "drift": "recipes.drift",
    "exit_status": "cli.exit_status",
    "feature_cache": "core.feature_cache",
    "finetuner": "strategies.finetuner",
    "groups": "core.groups",
    "image.weights": "image.weight_files",
    "layers": "model.layers",
    "lora": "strategies.lora",
    "monitor": "recipes.monitor",
    "optim": "core.optim",
    "plan": "strategies.plan",
    "progress": "core.progress",
    "registry": "strategies.registry",
    "regularizers": "core.l2_sp",
    "schedule": "core.schedule",
    "schedulers": "core.lr_schedulers",
    "selectors": "model.selectors",
    "start_weights": "core.start_weights",
    "state": "core.state",
    "trainable_only": "checkpointing.trainable_only",
    "transfer.cli": "cli.transfer",
    "transfer.optim": "transfer.stage_optimizers",
    "transfer.progress": "transfer.record",
    "triggers": "core.triggers",
    "weights": "checkpointing.weights",
    "wise_ft": "recipes.wise_ft",
    "yaml_dump": "cli.yaml_dump",
}
"""Old module path (below the package) -> new module path."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import finetune_strategies.<old path>`` with the module at its new path."""

    @override  # declared by typeshed's ABC, not by the runtime one
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix(PACKAGE + ".")
        if old == fullname or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    @override
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{PACKAGE}.{MOVED[spec.name.removeprefix(PACKAGE + '.')]}")
        self._own_specs[module.__name__] = module.__spec__
        return module

    @override  # declared by typeshed's ABC, not by the runtime one
    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported at its new path; the import system has just given it the old
        path's spec, so it gets its own back."""
        module.__spec__ = self._own_specs.pop(module.__name__)


def install(package: ModuleType) -> None:
    """Put the finder on ``sys.meta_path`` (once). An old path whose name is also an attribute of the package
    (``wise_ft`` is a function there) is registered now, so that importing it never replaces that attribute."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
    for old, new in MOVED.items():
        if "." not in old and hasattr(package, old):
            sys.modules.setdefault(f"{PACKAGE}.{old}", importlib.import_module(f"{PACKAGE}.{new}"))
