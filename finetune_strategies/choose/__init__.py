"""Choosing what to fine-tune: :func:`suggest_layers` compares candidate sets of layers with short probe runs
(see :mod:`finetune_strategies.choose.suggest`), and :func:`default_candidates` / :func:`layer_ranges` are the
ranges it compares by default."""

from finetune_strategies.choose.candidates import Candidate, default_candidates, layer_ranges
from finetune_strategies.choose.suggest import (
    CandidateResult,
    Evidence,
    LayerGradient,
    LayerSuggestion,
    suggest_layers,
)

__all__ = [
    "Candidate",
    "CandidateResult",
    "Evidence",
    "LayerGradient",
    "LayerSuggestion",
    "default_candidates",
    "layer_ranges",
    "suggest_layers",
]
