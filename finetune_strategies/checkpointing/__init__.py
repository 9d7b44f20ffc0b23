"""Files on disk: safe loading of weights, the checkpoint IO that writes atomically, checks that a
checkpoint file is complete, and checkpoints that keep only what trained."""

from finetune_strategies.checkpointing.trainable_only import complete_checkpoint, load_from_checkpoint

__all__ = ["complete_checkpoint", "load_from_checkpoint"]
