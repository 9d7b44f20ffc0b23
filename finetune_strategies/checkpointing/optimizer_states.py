"""Whether a checkpoint's optimizer states fit the optimizers a resumed fit built.

torch loads the state of another optimizer class without a word (``Optimizer.load_state_dict`` checks only
the number of groups and parameters) and fails at the first step, inside the optimizer: SGD's state resumed
into Adam raises ``KeyError: 'step'``. Every optimizer keeps its ``defaults`` keys (``betas``, ``momentum``,
...) in each of its param groups, so a saved group that lacks one of the built optimizer's keys was written
by another optimizer class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer

from finetune_strategies.errors import ResumeMismatchError


def check_optimizer_states(path: Any, saved: Any, optimizers: Sequence[Optimizer]) -> None:
    """Raise :class:`~finetune_strategies.errors.ResumeMismatchError` when ``saved`` (a checkpoint's
    ``optimizer_states``) was written by other optimizers than ``optimizers``."""
    if not isinstance(saved, list):
        return
    if len(saved) != len(optimizers):
        raise ResumeMismatchError(
            f"Checkpoint {path} holds the state of {len(saved)} optimizer(s), but configure_optimizers built "
            f"{len(optimizers)}. Resume with the optimizers that wrote it, or load its weights and start a new fit."
        )
    for index, (state, optimizer) in enumerate(zip(saved, optimizers, strict=True)):
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not isinstance(groups, list) or not groups or not isinstance(groups[0], dict):
            continue
        missing = sorted(set(optimizer.defaults) - set(groups[0]))
        if missing:
            raise ResumeMismatchError(
                f"Checkpoint {path}: optimizer {index} was saved without {', '.join(missing)}, which "
                f"{type(optimizer).__name__} keeps in every param group, so another optimizer class wrote it "
                f"(its groups hold {', '.join(sorted(k for k in groups[0] if k != 'params'))}). Resume with the "
                "optimizer that wrote it, or load its weights and start a new fit."
            )
