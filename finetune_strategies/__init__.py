"""Flash-style fine-tuning strategies for Lightning 2.x."""

import sys

from finetune_strategies import _legacy_paths
from finetune_strategies.checkpointing import complete_checkpoint, load_from_checkpoint
from finetune_strategies.core import FinetuningStrategy, FlashBaseFinetuning, Phase, PhaseSpec, StrategyOptions
from finetune_strategies.errors import (
    AdapterError,
    CheckpointError,
    CompileFallbackError,
    ConfigurationError,
    FinetuningError,
    FrozenWeightsError,
    MissingDependencyError,
    MissingModuleError,
    ResumeMismatchError,
    ScheduleError,
    SelectorError,
    StrategySpecError,
    StrategySpecTypeError,
)
from finetune_strategies.model import (
    Anatomy,
    Layer,
    LayerUnit,
    find_anatomy,
    list_layers,
    name_parameters,
    resolve_selector,
    resolve_selectors,
)
from finetune_strategies.model.adapters import merge_adapters
from finetune_strategies.recipes import (
    DriftMonitor,
    EpochRecord,
    TrainableMonitor,
    WiSEFT,
    WiSEFTResult,
    plot_drift,
    wise_ft,
)
from finetune_strategies.strategies import (
    LPFT,
    EpochPlan,
    Finetuner,
    Freeze,
    FreezeUnfreeze,
    GradualUnfreeze,
    Lora,
    NoFreeze,
    Phases,
    SchedulePlan,
    StrategySpec,
    UnfreezeMilestones,
    available_strategies,
    describe_schedule,
    register_strategy,
    resolve_strategy,
    unregister_strategy,
)
from finetune_strategies.trainer import Trainer

__version__ = "0.2.0"

__all__ = [
    "LPFT",
    "AdapterError",
    "Anatomy",
    "CheckpointError",
    "CompileFallbackError",
    "ConfigurationError",
    "DriftMonitor",
    "EpochPlan",
    "EpochRecord",
    "Finetuner",
    "FinetuningError",
    "FinetuningStrategy",
    "FlashBaseFinetuning",
    "Freeze",
    "FreezeUnfreeze",
    "FrozenWeightsError",
    "GradualUnfreeze",
    "Layer",
    "LayerUnit",
    "Lora",
    "MissingDependencyError",
    "MissingModuleError",
    "NoFreeze",
    "Phase",
    "PhaseSpec",
    "Phases",
    "ResumeMismatchError",
    "ScheduleError",
    "SchedulePlan",
    "SelectorError",
    "StrategyOptions",
    "StrategySpec",
    "StrategySpecError",
    "StrategySpecTypeError",
    "TrainableMonitor",
    "Trainer",
    "UnfreezeMilestones",
    "WiSEFT",
    "WiSEFTResult",
    "__version__",
    "available_strategies",
    "complete_checkpoint",
    "describe_schedule",
    "find_anatomy",
    "list_layers",
    "load_from_checkpoint",
    "merge_adapters",
    "name_parameters",
    "plot_drift",
    "register_strategy",
    "resolve_selector",
    "resolve_selectors",
    "resolve_strategy",
    "unregister_strategy",
    "wise_ft",
]

_legacy_paths.install(sys.modules[__name__])
