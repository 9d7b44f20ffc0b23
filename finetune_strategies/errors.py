"""Exceptions raised by finetune-strategies, and :func:`require`, the one import of an optional extra.

Every error subclasses a built-in exception (``ValueError``, ``TypeError``, ``AttributeError``,
``RuntimeError``) so that callers who do not know this library can still catch it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class FinetuningError(Exception):
    """Base class of all errors raised by this library."""


class StrategySpecError(FinetuningError, ValueError):
    """A strategy spec has the right type but a wrong value (unknown name, bad epoch order, ...)."""


class StrategySpecTypeError(FinetuningError, TypeError):
    """A strategy spec, or its metadata, has the wrong type or shape."""


class MissingModuleError(FinetuningError, AttributeError):
    """The LightningModule has no module to freeze under the expected name."""


class TransferConfigError(FinetuningError, ValueError):
    """A transfer-learning config is malformed or does not fit the model and data it is run with."""


class ScheduleError(FinetuningError, ValueError):
    """A schedule does not fit the model it is applied to (e.g. more layers than the backbone has)."""


class SelectorError(ScheduleError, TransferConfigError):
    """A module selector that cannot be read, or that picks no module of the model it is applied to."""


class ConfigurationError(FinetuningError, RuntimeError):
    """The trainer setup cannot run the strategy (two strategies at once, DeepSpeed without a
    ``*_deepspeed`` strategy, an option a distributed engine cannot honour, ...)."""


class CompileFallbackError(ConfigurationError):
    """A compiled model fell back to eager during a fit with ``strict_compile=True`` (see
    :mod:`finetune_strategies.core.compiled`)."""


class WeightMatchError(FinetuningError, ValueError):
    """Pretrained weights cannot be read, or do not fit the model they are loaded into (missing,
    unexpected or mis-shaped keys)."""


class StageError(FinetuningError, RuntimeError):
    """A transfer-learning stage could not run or did not finish."""


class CheckpointError(FinetuningError, RuntimeError):
    """A checkpoint to resume from is missing, truncated or corrupt, or cannot resume training."""


class ResumeMismatchError(FinetuningError, ValueError):
    """A checkpoint was written by a different fine-tuning strategy or schedule than this run's."""


class UnknownBackboneError(FinetuningError, ValueError):
    """A backbone name that neither timm nor torchvision knows."""


class BackboneError(FinetuningError, ValueError):
    """A backbone module whose classifier head cannot be found or replaced."""


class PretrainedWeightsError(FinetuningError, RuntimeError):
    """Pretrained weights could not be fetched or read (offline hub, unreadable file, ...)."""


class ImageDataError(FinetuningError, ValueError):
    """Image data that cannot be used: bad shapes, mismatched lengths, empty classes, ..."""


class TextDataError(FinetuningError, ValueError):
    """Text data that cannot be used: missing columns or fields, empty texts, mismatched lengths, ..."""


class MissingPathError(FinetuningError, FileNotFoundError):
    """A folder, image or weight file that does not exist."""


class ModelConfigError(FinetuningError, ValueError):
    """A model setting with a wrong value: optimizer, scheduler, num_classes, labels, ..."""


class MissingDependencyError(FinetuningError, ImportError):
    """An optional dependency (an extra such as ``finetune-strategies[peft]``) is not installed."""


class AdapterError(FinetuningError, ValueError):
    """Adapters that cannot be injected: no layer to adapt, targets that match nothing, a model that
    already carries adapters, a bad rank, ..."""


class FrozenWeightsError(CheckpointError):
    """A checkpoint that keeps only trained weights is loaded onto other frozen weights than it was
    trained on (their SHA-256 fingerprints differ), or onto a model that lacks them."""


class UsageError(FinetuningError, ValueError):
    """A command line or config file that cannot run as given: a missing setting, or a value that the
    model, data, strategy or trainer rejected when the CLI built them. The CLI exits with status 2."""


def install_line(extra: str) -> str:
    """The pip line that installs finetune-strategies with ``extra``."""
    return f'pip install "finetune-strategies[{extra}]"'


def require(module: str, extra: str, *, what: str, package: str | None = None) -> ModuleType:
    """Import ``module`` of the optional ``extra``, or raise a :class:`MissingDependencyError` that names
    the line installing it (``pip install "finetune-strategies[demo]"``). ``what`` (the feature) starts
    the message; ``package`` is the distribution's name where it differs from the module's
    (``scikit-learn`` for ``sklearn.datasets``)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{what} needs {package or module}, from the [{extra}] extra of finetune-strategies: "
            f"{install_line(extra)} ({type(error).__name__}: {error})"
        ) from None
