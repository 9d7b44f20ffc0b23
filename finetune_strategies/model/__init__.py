"""What a model is made of: its layers, the selector language that names its modules, the pretrained
modules a strategy freezes, the BatchNorm rules of freezing, and peft adapters injected into it."""

from finetune_strategies.model.layers import Layer, LayerUnit, list_layers, name_parameters
from finetune_strategies.model.selectors import resolve_selector, resolve_selectors

__all__ = ["Layer", "LayerUnit", "list_layers", "name_parameters", "resolve_selector", "resolve_selectors"]
