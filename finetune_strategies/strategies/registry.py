"""Strategy names, and the one function that turns any strategy spec into a callback."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from lightning.pytorch.callbacks import BaseFinetuning

from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.options import StrategyOptions
from finetune_strategies.errors import StrategySpecError, StrategySpecTypeError
from finetune_strategies.validation import did_you_mean

StrategySpec = str | os.PathLike[str] | tuple[str, Any] | list[Any] | Mapping[str, Any] | BaseFinetuning
"""A name, ``(name, metadata)``, ``{"strategy": name, **kwargs}``, a YAML/JSON file of that dict, or a
callback instance."""

SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")

Factory = Callable[..., BaseFinetuning]
F = TypeVar("F", bound=Factory)

_SPEC_FORMS = (
    'a name ("freeze"), a (name, metadata) tuple (("freeze_unfreeze", 7)), a dict '
    '({"strategy": "freeze_unfreeze", "unfreeze_epoch": 7}), a YAML or JSON file holding such a dict, '
    "or a BaseFinetuning callback instance"
)


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    fixed: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}


def register_strategy(
    name: str, *, override: bool = False, deepspeed_variant: bool = False, **fixed: Any
) -> Callable[[F], F]:
    """Register a strategy factory (usually a :class:`FinetuningStrategy` subclass) under ``name``.

    Use it as a decorator where the strategy is defined. ``fixed`` keywords are always passed to the
    factory. ``deepspeed_variant=True`` also registers ``f"{name}_deepspeed"``, which pre-registers its
    param groups (``preregister_groups=True``), as Flash's ``*_deepspeed`` names do. Registering a taken
    name raises :class:`StrategySpecError` unless ``override=True``.
    """
    if not isinstance(name, str) or not name:
        raise StrategySpecTypeError(f"A strategy name must be a non-empty string, got {name!r}.")

    entries = {name: dict(fixed)}
    if deepspeed_variant:
        entries[f"{name}_deepspeed"] = {**fixed, "preregister_groups": True}

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise StrategySpecTypeError(f"register_strategy({name!r}) needs a callable, got {factory!r}.")
        taken = [key for key in entries if key in _REGISTRY]
        if taken and not override:  # checked for every name first: nothing is registered halfway
            raise StrategySpecError(
                f"A strategy named {taken[0]!r} is already registered ({_REGISTRY[taken[0]].factory!r}). "
                "Pass override=True to replace it."
            )
        _REGISTRY.update((key, _Entry(factory, keywords)) for key, keywords in entries.items())
        return factory

    return decorator


def unregister_strategy(name: str) -> None:
    """Remove a registered name (mostly for tests)."""
    if name not in _REGISTRY:
        raise StrategySpecError(_unknown_name_message(name))
    del _REGISTRY[name]


def registered_factory(name: str) -> tuple[Factory, dict[str, Any]]:
    """The factory registered under ``name`` and the keywords it is always given."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise StrategySpecError(_unknown_name_message(name))
    return entry.factory, dict(entry.fixed)


def available_strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return sorted(_REGISTRY)


def _unknown_name_message(name: str) -> str:
    return (
        f"Unknown fine-tuning strategy {name!r}.{did_you_mean(name, _REGISTRY)} "
        f"Available: {', '.join(available_strategies())}."
    )


def is_spec_file(spec: Any) -> bool:
    """Whether ``spec`` names a schedule file rather than a strategy (a path, or a str ending in .yaml...)."""
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and spec not in _REGISTRY and spec.lower().endswith(SPEC_FILE_SUFFIXES)


def load_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a strategy dict (``{"strategy": name, ...}``) from a YAML or JSON file."""
    file = Path(path)
    if file.suffix.lower() not in SPEC_FILE_SUFFIXES:
        raise StrategySpecError(f"Strategy file {str(file)!r} must end in {', '.join(SPEC_FILE_SUFFIXES)}.")
    if not file.is_file():
        raise StrategySpecError(f"Strategy file {str(file)!r} does not exist.")
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise StrategySpecError(f"Cannot parse strategy file {str(file)!r}: {error}") from None
    if not isinstance(data, Mapping) or "strategy" not in data:
        raise StrategySpecTypeError(
            f"Strategy file {str(file)!r} must hold a mapping with a 'strategy' key, e.g. "
            f"'strategy: phases' and 'phases: [...]', got {data!r}."
        )
    return dict(data)


def _accepted_keywords(factory: Factory) -> set[str] | None:
    """Keywords ``factory`` accepts, following ``**options: Unpack[StrategyOptions]``; None if any."""
    accepted: set[str] = set()
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            if isinstance(factory, type) and issubclass(factory, FinetuningStrategy):
                accepted |= set(StrategyOptions.__annotations__)
            else:
                return None
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            accepted.add(parameter.name)
    return accepted


def _missing_required(factory: Factory, keywords: dict[str, Any]) -> list[str]:
    """Required keyword parameters of ``factory`` that ``keywords`` leaves out."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in keywords
    ]


def _parse(spec: Any) -> tuple[str, bool, Any, dict[str, Any]]:
    """Split a spec into (name, has_metadata, metadata, keywords)."""
    if isinstance(spec, str):
        return spec, False, None, {}
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise StrategySpecTypeError(
                f"A strategy tuple must be (name, metadata), e.g. ('freeze_unfreeze', 7), got {spec!r}."
            )
        name, metadata = spec
        if not isinstance(name, str):
            raise StrategySpecTypeError(
                f"The first item of a strategy tuple must be the strategy name (a str), got {name!r}."
            )
        return name, True, metadata, {}
    if isinstance(spec, Mapping):
        keywords = dict(spec)
        name = keywords.pop("strategy", None)
        if not isinstance(name, str):
            raise StrategySpecTypeError(
                f'A strategy dict needs a "strategy" key naming the strategy, e.g. '
                f'{{"strategy": "freeze_unfreeze", "unfreeze_epoch": 7}}, got {spec!r}.'
            )
        if not all(isinstance(k, str) for k in keywords):
            raise StrategySpecTypeError(f"Strategy dict keys must be strings, got {list(keywords)!r}.")
        return name, False, None, keywords
    raise StrategySpecTypeError(f"A strategy must be {_SPEC_FORMS}; got {spec!r} ({type(spec).__name__}).")


def resolve_strategy(spec: StrategySpec, **options: Any) -> BaseFinetuning:
    """Turn ``spec`` into a fine-tuning callback.

    ``options`` (for example ``train_bn=False``) are passed to the strategy's constructor; ``None``
    values are dropped. A callback instance is returned as is and takes no options.

    Raises:
        StrategySpecError: (a ``ValueError``) for an unknown name or a bad value.
        StrategySpecTypeError: (a ``TypeError``) for a spec or metadata of the wrong type or shape.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(spec, BaseFinetuning):
        if options:
            raise StrategySpecTypeError(
                f"Options {sorted(options)} cannot be applied to a callback instance "
                f"({type(spec).__name__}); set them when you construct it."
            )
        return spec
    if is_spec_file(spec):
        spec = load_spec_file(spec)  # type: ignore[arg-type]
    name, has_metadata, metadata, keywords = _parse(spec)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise StrategySpecError(_unknown_name_message(name))
    if has_metadata:
        from_metadata = getattr(entry.factory, "kwargs_from_metadata", None)
        if from_metadata is None:
            raise StrategySpecTypeError(f"Strategy {name!r} takes no metadata, got {metadata!r}.")
        keywords.update(from_metadata(metadata))
    for source in (options, entry.fixed):
        clash = sorted(set(source) & set(keywords))
        if clash:
            raise StrategySpecTypeError(f"Strategy {name!r}: {clash} given twice in {spec!r} and {source!r}.")
        keywords.update(source)
    accepted = _accepted_keywords(entry.factory)
    unknown = sorted(set(keywords) - accepted) if accepted is not None else []
    if unknown:
        raise StrategySpecTypeError(
            f"Strategy {name!r} does not take {unknown}. It takes: {', '.join(sorted(accepted or ()))}."
        )
    missing = _missing_required(entry.factory, keywords)
    if missing:
        example = getattr(entry.factory, "metadata_example", "")
        hint = f" (as metadata: {example})" if example else ""
        raise StrategySpecTypeError(f"Strategy {name!r} needs {missing}{hint}; got {spec!r}.")
    try:
        callback = entry.factory(**keywords)
    except (StrategySpecError, StrategySpecTypeError) as error:
        example = getattr(entry.factory, "metadata_example", "")
        if has_metadata and example:
            raise type(error)(f"{error} Expected metadata like {example}.") from error
        raise
    if not isinstance(callback, BaseFinetuning):
        raise StrategySpecTypeError(
            f"Strategy {name!r} built {callback!r}, which is not a lightning BaseFinetuning callback."
        )
    return callback
