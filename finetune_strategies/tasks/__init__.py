"""What the tasks share: the classifier LightningModule base, the split data module's loaders, and class
targets for their data modules."""

from finetune_strategies.tasks.classifier import ClassifierModule
from finetune_strategies.tasks.splits import SplitDataModule
from finetune_strategies.tasks.targets import encode_targets, stratified_hold_out

__all__ = ["ClassifierModule", "SplitDataModule", "encode_targets", "stratified_hold_out"]
