"""The exit statuses of the ``finetune-strategies`` commands, and the one-line error they print.

* 0: success (also ``--help`` and ``--print_config``).
* 1: the run failed: data unreadable during training, pretrained weights that cannot be fetched or
  do not fit, a checkpoint that cannot resume, a transfer stage that did not finish.
* 2: a usage error, as in argparse: an unknown subcommand, option or strategy, a value of the wrong
  type, an unreadable config file, a value that is wrong for its setting, or a command or strategy
  whose optional extra is not installed (the message names the ``pip install`` line).

A value is wrong for its setting when a class of :data:`USAGE_ERRORS` says so (at any time: a
selector that matches no module is found when the fit sets up), or when the model, data, strategy
or trainer rejects it as the command builds them from the config, before anything trains
(:func:`as_usage_errors`). The errors of :data:`RUN_ERRORS` are failures of the run even then.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.utilities.exceptions import MisconfigurationException

from finetune_strategies.errors import (
    BackboneError,
    CheckpointError,
    FinetuningError,
    MissingDependencyError,
    MissingPathError,
    ModelConfigError,
    PretrainedWeightsError,
    ResumeMismatchError,
    ScheduleError,
    StageError,
    StrategySpecError,
    StrategySpecTypeError,
    TransferConfigError,
    UnknownBackboneError,
    UsageError,
    WeightMatchError,
)

SUCCESS, FAILURE, USAGE_ERROR = 0, 1, 2

USAGE_ERRORS: tuple[type[Exception], ...] = (
    UsageError,
    StrategySpecError,
    StrategySpecTypeError,
    ScheduleError,
    TransferConfigError,
    ModelConfigError,
    UnknownBackboneError,
    BackboneError,
    MissingPathError,
    MissingDependencyError,  # an extra to install: the setup, not the run, is wrong
    MisconfigurationException,  # Lightning's own "this Trainer setting cannot work"
)
"""Errors that always mean the command line or config is wrong."""

RUN_ERRORS: tuple[type[FinetuningError], ...] = (
    PretrainedWeightsError,
    WeightMatchError,
    CheckpointError,
    ResumeMismatchError,
    StageError,
)
"""Errors that mean the run failed, also when they come while the command builds its objects."""


def reported_error(error: BaseException) -> Exception | None:
    """The error to report for ``error``: ours (possibly wrapped, e.g. by jsonargparse while it links
    arguments) or Lightning's configuration error; None for anything else, which keeps its traceback."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (FinetuningError, MisconfigurationException)):
            return seen
        seen = seen.__cause__
    return None


LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning", "lightning_fabric")


def raised_by_lightning(error: BaseException) -> bool:
    """Whether Lightning's own code raised ``error`` (the innermost frame of its traceback is Lightning's)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    module = str(frame.tb_frame.f_globals.get("__name__", "")) if frame is not None else ""
    return module.split(".")[0] in LIGHTNING_PACKAGES


def usage_error(error: Exception) -> UsageError | None:
    """``error``, raised while a command built the model, data, strategy or trainer from its config, as
    a :class:`UsageError`; None when it is a failure of the run (:data:`RUN_ERRORS`) or a bug.

    Besides our errors, what Lightning raises (a ``Trainer`` setting it refuses, a plugin the setting
    needs that is not installed) and the ``ValueError`` and ``TypeError`` of torch count: a value from
    the config reached them unchecked.
    """
    found = reported_error(error)
    if isinstance(found, RUN_ERRORS):
        return None
    if found is None and not (isinstance(error, (ValueError, TypeError)) or raised_by_lightning(error)):
        return None
    return UsageError(str(found or error).strip())


@contextmanager
def as_usage_errors() -> Iterator[None]:
    """Re-raise what the block raises as a :class:`UsageError`, where :func:`usage_error` says it is one."""
    try:
        yield
    except Exception as error:
        usage = usage_error(error)
        if usage is None:
            raise
        raise usage from error


def exit_status(error: BaseException) -> int:
    """``USAGE_ERROR`` (2) for a usage error, ``FAILURE`` (1) for any other error."""
    return USAGE_ERROR if isinstance(reported_error(error) or error, USAGE_ERRORS) else FAILURE


def report(prog: str, error: BaseException, status: int | None = None) -> int:
    """Print ``prog: error: <message>`` to stderr and return the exit status (``exit_status`` by default)."""
    print(f"{prog}: error: {reported_error(error) or error}", file=sys.stderr)
    return exit_status(error) if status is None else status
