"""The fine-tuning callback and the parts it composes, one concern per module.

:class:`~finetune_strategies.core.callback.FinetuningStrategy` runs a schedule of
:class:`~finetune_strategies.core.schedule.Phase`; see ``docs/architecture.md`` for how a spec flows
through these modules.
"""

from finetune_strategies.core.callback import FinetuningStrategy, FlashBaseFinetuning
from finetune_strategies.core.options import StrategyOptions
from finetune_strategies.core.schedule import Phase, PhaseSpec

__all__ = ["FinetuningStrategy", "FlashBaseFinetuning", "Phase", "PhaseSpec", "StrategyOptions"]
