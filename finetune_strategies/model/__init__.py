"""What a model is made of: its anatomy (backbone, head, layers), its layers, the selector language that
names its modules, the pretrained modules a strategy freezes, the BatchNorm rules of freezing, and peft
adapters injected into it."""

from finetune_strategies.model.anatomy import Anatomy, find_anatomy
from finetune_strategies.model.layers import Layer, LayerUnit, list_layers, name_parameters
from finetune_strategies.model.selectors import resolve_selector, resolve_selectors

__all__ = [
    "Anatomy",
    "Layer",
    "LayerUnit",
    "find_anatomy",
    "list_layers",
    "name_parameters",
    "resolve_selector",
    "resolve_selectors",
]
