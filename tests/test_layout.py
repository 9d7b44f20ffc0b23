"""The package's layout: a small top level, subpackages in layers with no import cycle, registration where a
strategy is defined, and every name and module path of 0.1 still importing."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import finetune_strategies
from finetune_strategies.strategies import registry

PACKAGE = Path(finetune_strategies.__file__).parent
FIXTURES = Path(__file__).with_name("fixtures") / "v0_1"

# Bottom to top: a module imports (at module level) only from its own layer or the layers below it.
LAYERS: list[set[str]] = [
    {"errors", "validation", "_lightning"},
    {"model"},
    {"checkpointing"},
    {"core"},
    {"recipes"},
    {"strategies"},
    {"trainer"},
    {"choose"},
    {"tasks"},
    {"image", "text"},
    {"transfer"},
    {"demo"},
    {"cli"},
    {"__init__", "__main__", "_legacy_paths"},
]

# Names of 0.1 modules that moved to another module than their old path's (documented in CHANGELOG.md).
MOVED_NAMES = {
    ("finetune_strategies.compat", "frozen_roots"): "finetune_strategies.model.roots",
    ("finetune_strategies.checkpoints", "check_sharded"): "finetune_strategies.checkpointing.files",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module_level_only: bool) -> set[str]:
    """The package's modules that ``path`` imports; ``from pkg import name`` counts ``pkg.name`` if that is a
    module. With ``module_level_only``, imports inside functions are left out (``TYPE_CHECKING`` blocks count)."""
    tree = ast.parse(path.read_text())
    this = module_name(path)
    is_package = path.name == "__init__.py"
    nodes = []
    if module_level_only:
        stack: list[ast.AST] = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules if len(submodules) == len(node.names) else {source, *submodules}
    return {name for name in found if name in MODULES}


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    if module.endswith(".__main__"):  # `python -m` entry points sit on top, beside the command they run
        return len(LAYERS) - 1
    top = module.split(".")[1] if "." in module else "__init__"
    top = top.removesuffix(".py")
    return next(index for index, names in enumerate(LAYERS) if top in names)


def test_the_top_level_keeps_at_most_eight_modules():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_every_subpackage_has_a_place_in_the_layers():
    tops = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    tops -= {"py"}  # py.typed
    known = set().union(*LAYERS)
    assert {name for name in tops if not name.endswith(".typed")} <= known


def test_no_import_cycle_between_modules():
    graph = {name: imported_modules(path, module_level_only=True) - {name} for name, path in MODULES.items()}
    # a package's __init__ that imports its own modules is not a cycle with them: count edges into packages
    # only from outside the package
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not (MODULES[t].name == "__init__.py" and name.startswith(t + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_modules_import_only_from_their_layer_or_below():
    upward = [
        f"{name} -> {target}"
        for name, path in MODULES.items()
        for target in imported_modules(path, module_level_only=True)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, upward


def test_no_private_name_is_imported_across_modules():
    crossing = [
        f"{name}: {node.module}.{alias.name}"
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finetune_strategies")
        for alias in node.names
        # a private module (_lightning, the one place for Lightning's private APIs) may be imported by name
        if alias.name.startswith("_") and f"{node.module}.{alias.name}" not in MODULES
    ]
    assert crossing == []


def test_the_registry_imports_nothing_it_registers():
    imported = imported_modules(MODULES["finetune_strategies.strategies.registry"], module_level_only=False)
    assert not {m for m in imported if m.startswith("finetune_strategies.strategies.")}, imported


def test_each_builtin_registers_where_it_is_defined():
    for name in (
        "no_freeze",
        "freeze",
        "freeze_unfreeze",
        "unfreeze_milestones",
        "gradual_unfreeze",
        "phases",
        "lp_ft",
        "backbone_finetuning",
        "surgical",
    ):
        factory, _ = registry.registered_factory(name)
        assert factory.__module__ == "finetune_strategies.strategies.builtins", name
        assert registry.registered_factory(f"{name}_deepspeed") == (factory, {"preregister_groups": True})
    assert registry.registered_factory("lora")[0].__module__ == "finetune_strategies.strategies.lora"


def test_every_module_imports():
    for info in pkgutil.walk_packages(finetune_strategies.__path__, "finetune_strategies."):
        if not info.name.endswith("__main__"):  # those run the command
            importlib.import_module(info.name)


def test_every_public_name_and_module_path_of_0_1_still_resolves():
    """The names each 0.1 module defined (pinned from 0.1's source): configs and pickles name them by path."""
    names: dict[str, list[str]] = json.loads((FIXTURES / "public_names.json").read_text())
    assert len(names) == 60
    for old_module, attributes in names.items():
        module = importlib.import_module(old_module)
        for attribute in attributes:
            moved = MOVED_NAMES.get((old_module, attribute))
            owner = importlib.import_module(moved) if moved else module
            assert hasattr(owner, attribute), f"{old_module}.{attribute}"
    assert set(names["finetune_strategies"]) <= set(finetune_strategies.__all__)


def test_an_old_path_is_the_new_module_itself():
    old = importlib.import_module("finetune_strategies.lora")
    new = importlib.import_module("finetune_strategies.strategies.lora")
    assert old is new
    assert new.__spec__ is not None
    assert new.__spec__.name == "finetune_strategies.strategies.lora"
    assert importlib.import_module("finetune_strategies.transfer.cli") is importlib.import_module(
        "finetune_strategies.cli.transfer"
    )
    # an old path named like a package attribute (the wise_ft function) leaves that attribute alone
    importlib.import_module("finetune_strategies.wise_ft")
    assert callable(finetune_strategies.wise_ft)
    assert not isinstance(finetune_strategies.wise_ft, type(importlib))
