"""Callbacks beside a strategy that keep what pretraining learned or show how far training moved from it:
WiSE-FT, the per-layer drift monitor, and the monitor of what trains. (L2-SP is an option of every
strategy, so it lives in the core: :mod:`finetune_strategies.core.l2_sp`.)"""

from finetune_strategies.recipes.drift import DriftMonitor, plot_drift
from finetune_strategies.recipes.monitor import EpochRecord, TrainableMonitor
from finetune_strategies.recipes.wise_ft import WiSEFT, WiSEFTResult, wise_ft

__all__ = ["DriftMonitor", "EpochRecord", "TrainableMonitor", "WiSEFT", "WiSEFTResult", "plot_drift", "wise_ft"]
