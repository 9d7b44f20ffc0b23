"""Check a checkpoint before training resumes from it, with errors that name the file.

A resumed run must never train on from a damaged file (:mod:`finetune_strategies.checkpointing.files`), nor
quietly resume a run that another strategy or schedule wrote. :func:`guard_resume` makes a
Lightning ``Trainer`` check, on every rank, right where it loads ``ckpt_path``:

* the file is a complete archive and every record in it passes its CRC check;
* it holds what resuming needs (weights, optimizer states, loop progress);
* it was written by the same fine-tuning strategy, with the same schedule and the same options that shape
  what trains (:meth:`~finetune_strategies.core.callback.FinetuningStrategy.training_options`), as this run's;
* if it keeps only the weights that trained (:mod:`finetune_strategies.checkpointing.trainable_only`), the model's
  frozen weights are the ones it was trained on; they are put back into it, for every ``Trainer``
  entry point that takes a ``ckpt_path``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.trainer.states import TrainerFn

from finetune_strategies import _lightning
from finetune_strategies.checkpointing.files import check_file, is_sharded
from finetune_strategies.checkpointing.trainable_only import complete_checkpoint
from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.state import describe_option_differences, option_differences, saved_strategy
from finetune_strategies.errors import CheckpointError, FinetuningError, ResumeMismatchError

RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "epoch", "global_step")


def check_contents(trainer: pl.Trainer, path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Raise if ``checkpoint`` cannot resume this fit: missing training state or another strategy."""
    # DeepSpeed and sharded checkpoints load weights and optimizer states in place and return the rest
    in_place = isinstance(trainer.strategy, DeepSpeedStrategy) or is_sharded(path)
    required = RESUME_KEYS[2:] if in_place else RESUME_KEYS
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} cannot resume training: it has no {', '.join(missing)} (was it saved with "
            "save_weights_only=True?). Load its weights with `model.load_state_dict(torch.load(path)"
            "['state_dict'])` and start a new fit instead."
        )
    current = [c for c in trainer.callbacks if isinstance(c, BaseFinetuning)]  # type: ignore[attr-defined]
    saved = saved_strategy(checkpoint)
    ours = current[0] if current and isinstance(current[0], FinetuningStrategy) else None
    now_name = type(current[0]).__name__ if current else None
    if saved is None:
        if ours is not None and ours.freezes:
            raise ResumeMismatchError(
                f"Checkpoint {path} was written without a finetune-strategies strategy, but this run uses "
                f"{now_name}, which freezes modules: the optimizer state cannot match. Resume with the setup "
                "that wrote it, or load its weights and start a new fit."
            )
        return
    saved_name = saved.strategy
    if saved_name != now_name:
        raise ResumeMismatchError(
            f"Checkpoint {path} was written by fine-tuning strategy {saved_name}, but this run uses "
            f"{now_name or 'none'}. Resume with {saved_name} and the same options, or load the weights "
            "and start a new fit."
        )
    if ours is not None and saved.schedule:
        written = saved.schedule
        planned = [phase.signature() for phase in ours.schedule]
        if written != planned:
            raise ResumeMismatchError(
                f"Checkpoint {path} was written by {saved_name} with the schedule {_show(written)}, but this "
                f"run's schedule is {_show(planned)}. Resume with the same options (epochs, layers), or "
                "load the weights and start a new fit."
            )
    if ours is not None:
        differences = option_differences(saved.options, ours.training_options())
        if differences:
            raise ResumeMismatchError(describe_option_differences(f"Checkpoint {path}", saved_name, differences))
        count = len(ours.schedule)
        wrong = [i for i in saved.started_phases if not 0 <= i < count]
        if wrong:
            raise ResumeMismatchError(
                f"Checkpoint {path}: its {saved_name} state lists started phases {wrong}, but the schedule has "
                f"{count} phase(s). It is damaged or crafted; start a new fit."
            )


def guard_resume(trainer: pl.Trainer) -> None:
    """Make ``trainer`` run :func:`check_file` and :func:`check_contents` when it loads ``ckpt_path``."""
    # functions and partials, not closures: ddp_spawn pickles the trainer
    _lightning.intercept_resume(trainer, check_file, functools.partial(_after_load, trainer), _as_checkpoint_error)


def _after_load(trainer: pl.Trainer, path: Any, loaded: dict[str, Any]) -> None:
    if trainer.state.fn == TrainerFn.FITTING:
        check_contents(trainer, path, loaded)
    complete_checkpoint(trainer.lightning_module, loaded, f"Checkpoint {path}")


def _as_checkpoint_error(path: Any, error: Exception) -> Exception:
    if isinstance(error, FinetuningError):
        return error
    return CheckpointError(f"Could not load checkpoint {path}: {type(error).__name__}: {error}")


def _show(schedule: list[list[Any]]) -> str:
    return "[" + ", ".join(f"epoch {epoch}: {label}" for epoch, label in schedule) + "]"
