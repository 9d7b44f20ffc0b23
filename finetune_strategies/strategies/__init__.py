"""The built-in strategies, each a short preset of the core callback, LoRA, the registry of names,
and the plan of a schedule.

Each strategy registers its name where it is defined (``@register_strategy``); importing this package
registers them all.
"""

from finetune_strategies.strategies.builtins import (
    LPFT,
    BackboneFinetuningStrategy,
    Freeze,
    FreezeUnfreeze,
    GradualUnfreeze,
    NoFreeze,
    Phases,
    SurgicalFinetuning,
    UnfreezeMilestones,
)
from finetune_strategies.strategies.finetuner import Finetuner
from finetune_strategies.strategies.lora import Lora
from finetune_strategies.strategies.plan import EpochPlan, SchedulePlan, describe_schedule
from finetune_strategies.strategies.registry import (
    StrategySpec,
    available_strategies,
    register_strategy,
    resolve_strategy,
    unregister_strategy,
)

__all__ = [
    "LPFT",
    "BackboneFinetuningStrategy",
    "EpochPlan",
    "Finetuner",
    "Freeze",
    "FreezeUnfreeze",
    "GradualUnfreeze",
    "Lora",
    "NoFreeze",
    "Phases",
    "SchedulePlan",
    "StrategySpec",
    "SurgicalFinetuning",
    "UnfreezeMilestones",
    "available_strategies",
    "describe_schedule",
    "register_strategy",
    "resolve_strategy",
    "unregister_strategy",
]
