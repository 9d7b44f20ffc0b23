"""Image classification: a task with a ``backbone`` and a ``head``, and its data module."""

from finetune_strategies.image.backbones import Backbone, build_backbone
from finetune_strategies.image.data import ImageClassificationData
from finetune_strategies.image.model import ImageClassifier
from finetune_strategies.image.predictions import PredictionsCSVWriter

__all__ = [
    "Backbone",
    "ImageClassificationData",
    "ImageClassifier",
    "PredictionsCSVWriter",
    "build_backbone",
]
