"""The ``text`` extra: ``transformers`` and ``tokenizers``, imported when a text feature is used."""

from __future__ import annotations

from types import ModuleType

from finetune_strategies.errors import require

TEXT_EXTRA = "text"


def require_transformers(what: str) -> ModuleType:
    """The ``transformers`` module, or a :class:`~finetune_strategies.errors.MissingDependencyError` naming
    ``pip install "finetune-strategies[text]"``; ``what`` (the feature) starts its message."""
    return require("transformers", TEXT_EXTRA, what=what)


def require_tokenizers(what: str) -> ModuleType:
    """The ``tokenizers`` module, or a :class:`~finetune_strategies.errors.MissingDependencyError` naming the
    text extra."""
    return require("tokenizers", TEXT_EXTRA, what=what)
