"""Every method of the package that overrides a base class's method says so with ``typing_extensions.override``.

The marker (``__override__ = True`` on the function) lets a type checker report an override whose base
method was renamed or removed, as when Lightning renames a hook. Dunder methods other than ``__call__``
are not marked (``__init__``, ``__repr__``, ... override ``object``'s by design).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from typing_extensions import override

import finetune_strategies

OPTIONAL_DEPENDENCIES = {"peft", "sklearn", "matplotlib", "deepspeed"}
"""Packages whose absence only leaves the modules that need them out (they are extras)."""


def package_modules() -> tuple[list[ModuleType], list[str]]:
    """Every module of the package, imported, and the names of those left out for a missing extra."""
    modules, left_out = [], []
    for info in pkgutil.walk_packages(finetune_strategies.__path__, f"{finetune_strategies.__name__}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":  # runs the command when imported
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in OPTIONAL_DEPENDENCIES:
                raise
            left_out.append(f"{info.name} (needs {error.name})")
    return modules, left_out


MODULES, LEFT_OUT = package_modules()


def classes_in(owner: ModuleType | type, module_name: str) -> Iterator[type]:
    """The classes ``owner`` defines (nested ones too), not those it imports."""
    for value in vars(owner).values():
        if (
            inspect.isclass(value)
            and value.__module__ == module_name
            and value.__qualname__.startswith("" if isinstance(owner, ModuleType) else f"{owner.__qualname__}.")
        ):
            yield value
            yield from classes_in(value, module_name)


def package_classes(modules: list[ModuleType]) -> list[type]:
    """The classes the modules define, each once (a module may bind one under two names)."""
    found = {cls for module in modules for cls in classes_in(module, module.__name__)}
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def function_of(attribute: object) -> object | None:
    """The function behind a class attribute (through staticmethod, classmethod, property), or None."""
    if isinstance(attribute, (staticmethod, classmethod)):
        return attribute.__func__
    if isinstance(attribute, property):
        return attribute.fget
    if isinstance(attribute, functools.cached_property):
        return attribute.func
    return attribute if inspect.isfunction(attribute) else None


def is_ours(function: object) -> bool:
    """Whether the package wrote the function (an Enum class also holds ``enum``'s ``_generate_next_value_``)."""
    return getattr(function, "__module__", "").startswith(f"{finetune_strategies.__name__}.")


def is_checked(name: str) -> bool:
    return not (name.startswith("__") and name.endswith("__")) or name == "__call__"


def unmarked_overrides(cls: type, ours: Callable[[object], bool] = is_ours) -> list[str]:
    """``Class.method (overrides Base)`` for each method of ``cls`` that overrides one without the marker."""
    unmarked = []
    bases = [base for base in cls.__mro__[1:] if base is not object]
    for name, attribute in vars(cls).items():
        function = function_of(attribute)
        if function is None or not is_checked(name) or not ours(function):
            continue
        base = next((base for base in bases if name in vars(base)), None)
        if base is not None and not getattr(function, "__override__", False):
            unmarked.append(f"{cls.__module__}.{cls.__qualname__}.{name} (overrides {base.__qualname__})")
    return unmarked


def test_the_walk_finds_the_package():
    classes = package_classes(MODULES)
    assert {finetune_strategies.FinetuningStrategy, finetune_strategies.Trainer, finetune_strategies.Lora} <= set(
        classes
    )
    assert len(classes) > 50


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_every_overriding_method_is_marked(module):
    unmarked = [entry for cls in package_classes([module]) for entry in unmarked_overrides(cls)]
    assert not unmarked, "add @override (from typing_extensions) to:\n" + "\n".join(unmarked)


def test_no_module_is_left_out_unless_an_extra_is_missing():
    if LEFT_OUT:
        pytest.skip(f"not checked, an extra is missing: {', '.join(LEFT_OUT)}")


class _Base:
    def hook(self) -> None: ...

    @staticmethod
    def helper() -> None: ...

    @classmethod
    def build(cls) -> None: ...

    @property
    def size(self) -> int:
        return 0

    def __call__(self) -> None: ...

    def __repr__(self) -> str:
        return ""


class _Unmarked(_Base):
    def hook(self) -> None: ...

    @staticmethod
    def helper() -> None: ...

    @classmethod
    def build(cls) -> None: ...

    @property
    def size(self) -> int:
        return 1

    def __call__(self) -> None: ...

    def __repr__(self) -> str:  # a dunder other than __call__: not checked
        return "unmarked"

    def own(self) -> None: ...  # overrides nothing


class _Marked(_Base):
    @override
    def hook(self) -> None: ...

    @staticmethod
    @override
    def helper() -> None: ...

    @classmethod
    @override
    def build(cls) -> None: ...

    @property
    @override
    def size(self) -> int:
        return 1

    @override
    def __call__(self) -> None: ...


def test_the_check_sees_through_descriptors_and_skips_dunders_but_call():
    found = [entry.split(" ")[0].rsplit(".", 1)[1] for entry in unmarked_overrides(_Unmarked, ours=lambda _: True)]
    assert found == ["hook", "helper", "build", "size", "__call__"]
    assert unmarked_overrides(_Marked, ours=lambda _: True) == []
