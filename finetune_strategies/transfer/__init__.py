"""Config-driven staged transfer learning: pretrained weights, module matching, stages, new heads, replay.

See ``docs/transfer_learning.md``. The entry points are :func:`run_transfer_learning` and the CLI
subcommand ``finetune-strategies transfer --config tl.yaml`` (:func:`finetune_strategies.cli.transfer.transfer_main`).
"""

from typing import Any

from finetune_strategies.model.selectors import resolve_selector, resolve_selectors
from finetune_strategies.transfer.config import NewHeadsConfig, ReplayConfig, StageConfig, TransferConfig
from finetune_strategies.transfer.heads import SummedHeads, add_readout_heads, modules_outside
from finetune_strategies.transfer.matching import (
    MatchReport,
    load_pretrained,
    load_pretrained_state_dict,
    match_pretrained_weights,
)
from finetune_strategies.transfer.record import StageResult
from finetune_strategies.transfer.replay import ReplayDataModule, mix_replay
from finetune_strategies.transfer.runner import TransferResult, run_transfer_learning
from finetune_strategies.transfer.stages import StagePlan, plan_stages

__all__ = [
    "MatchReport",
    "NewHeadsConfig",
    "ReplayConfig",
    "ReplayDataModule",
    "StageConfig",
    "StagePlan",
    "StageResult",
    "SummedHeads",
    "TransferConfig",
    "TransferResult",
    "add_readout_heads",
    "load_pretrained",
    "load_pretrained_state_dict",
    "match_pretrained_weights",
    "mix_replay",
    "modules_outside",
    "plan_stages",
    "resolve_selector",
    "resolve_selectors",
    "run_transfer_learning",
    "transfer_main",
]


def __getattr__(name: str) -> Any:
    if name == "transfer_main":  # the CLI entry, which imports this package: loaded on first use
        from finetune_strategies.cli.transfer import transfer_main

        return transfer_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
