"""Exceptions raised by finetune-strategies.

Every error subclasses a built-in exception (``ValueError``, ``TypeError``, ``AttributeError``,
``RuntimeError``) so that callers who do not know this library can still catch it.
"""

from __future__ import annotations


class FinetuningError(Exception):
    """Base class of all errors raised by this library."""


class StrategySpecError(FinetuningError, ValueError):
    """A strategy spec has the right type but a wrong value (unknown name, bad epoch order, ...)."""


class StrategySpecTypeError(FinetuningError, TypeError):
    """A strategy spec, or its metadata, has the wrong type or shape."""


class MissingModuleError(FinetuningError, AttributeError):
    """The LightningModule has no module to freeze under the expected name."""


class ScheduleError(FinetuningError, ValueError):
    """A schedule does not fit the model it is applied to (e.g. more layers than the backbone has)."""


class UnknownBackboneError(FinetuningError, ValueError):
    """A backbone name that neither timm nor torchvision knows."""


class BackboneError(FinetuningError, ValueError):
    """A backbone module whose classifier head cannot be found or replaced."""


class WeightsMismatchError(FinetuningError, ValueError):
    """A weight file that does not fit the backbone (missing, unexpected or mis-shaped keys)."""


class PretrainedWeightsError(FinetuningError, RuntimeError):
    """Pretrained weights could not be fetched or read (offline hub, unreadable file, ...)."""


class ImageDataError(FinetuningError, ValueError):
    """Image data that cannot be used: bad shapes, mismatched lengths, empty classes, ..."""


class MissingPathError(FinetuningError, FileNotFoundError):
    """A folder, image or weight file that does not exist."""


class ModelConfigError(FinetuningError, ValueError):
    """A model setting with a wrong value: optimizer, scheduler, num_classes, labels, ..."""
