"""Config-driven staged transfer learning: pretrained weights, module matching, stages, new heads, replay.

See ``docs/transfer_learning.md``. The entry points are :func:`run_transfer_learning` and the CLI
subcommand ``finetune-strategies transfer --config tl.yaml`` (:func:`transfer_main`).
"""

from finetune_strategies.selectors import resolve_selector, resolve_selectors
from finetune_strategies.transfer.cli import transfer_main
from finetune_strategies.transfer.config import NewHeadsConfig, ReplayConfig, StageConfig, TransferConfig
from finetune_strategies.transfer.heads import SummedHeads, add_readout_heads, modules_outside
from finetune_strategies.transfer.matching import (
    MatchReport,
    load_pretrained,
    load_pretrained_state_dict,
    match_pretrained_weights,
)
from finetune_strategies.transfer.progress import StageResult
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
