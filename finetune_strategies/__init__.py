"""Flash-style fine-tuning strategies for Lightning 2.x."""

from finetune_strategies.adapters import merge_adapters
from finetune_strategies.base import FinetuningStrategy, FlashBaseFinetuning, StrategyOptions
from finetune_strategies.drift import DriftMonitor, plot_drift
from finetune_strategies.errors import (
    AdapterError,
    CheckpointError,
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
from finetune_strategies.finetuner import Finetuner
from finetune_strategies.layers import Layer, LayerUnit, list_layers, name_parameters
from finetune_strategies.lora import Lora
from finetune_strategies.monitor import EpochRecord, TrainableMonitor
from finetune_strategies.plan import EpochPlan, SchedulePlan, describe_schedule
from finetune_strategies.registry import (
    StrategySpec,
    available_strategies,
    register_strategy,
    resolve_strategy,
    unregister_strategy,
)
from finetune_strategies.schedule import Phase, PhaseSpec
from finetune_strategies.selectors import resolve_selector, resolve_selectors
from finetune_strategies.strategies import (
    LPFT,
    Freeze,
    FreezeUnfreeze,
    GradualUnfreeze,
    NoFreeze,
    Phases,
    UnfreezeMilestones,
)
from finetune_strategies.trainable_only import complete_checkpoint
from finetune_strategies.trainer import Trainer
from finetune_strategies.wise_ft import WiSEFT, WiSEFTResult, wise_ft

__version__ = "0.1.0"

__all__ = [
    "LPFT",
    "AdapterError",
    "CheckpointError",
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
    "list_layers",
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
