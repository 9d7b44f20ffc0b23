"""A custom fine-tuning callback, written as for Flash: only the import line changes.

    python examples/custom_callback.py

`FlashBaseFinetuning` is this library's base callback under Flash's name. The Flash-style
`finetune_function(pl_module, current_epoch, optimizer, opt_idx)` signature still works, and
`unfreeze_and_extend_param_group` puts the backbone in a param group of its own (which keeps
checkpoints resumable) with group 0's learning rate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tiny_data import make_tiny_dataset

from finetune_strategies import FlashBaseFinetuning, Trainer
from finetune_strategies.image import ImageClassificationData, ImageClassifier


# Create a finetuning callback
class FeatureExtractorFreezeUnfreeze(FlashBaseFinetuning):
    def __init__(self, unfreeze_epoch: int = 5, train_bn: bool = True):
        # this will set self.attr_names as ["backbone"]
        super().__init__("backbone", train_bn)
        self._unfreeze_epoch = unfreeze_epoch

    def finetune_function(self, pl_module, current_epoch, optimizer, opt_idx):
        # unfreeze any module you want by overriding this function
        # When ``current_epoch`` is 5, backbone will start to be trained.
        if current_epoch == self._unfreeze_epoch:
            self.unfreeze_and_extend_param_group(
                pl_module.backbone,
                optimizer,
            )


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--unfreeze_epoch", type=int, default=5)
    parser.add_argument("--max_epochs", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_tiny_dataset(Path(tmp) / "tiny")
        datamodule = ImageClassificationData.from_files(
            train_files=sorted((data / "train").rglob("*.png")),
            train_targets=[p.parent.name for p in sorted((data / "train").rglob("*.png"))],
            batch_size=4,
            num_workers=0,
            image_size=32,
        )
        model = ImageClassifier(backbone="test_resnet", num_classes=2, pretrained=False)
        trainer = Trainer(max_epochs=args.max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False)
        # Pass the callback to trainer.finetune
        trainer.finetune(model, datamodule, strategy=FeatureExtractorFreezeUnfreeze(unfreeze_epoch=args.unfreeze_epoch))
    groups = trainer.optimizers[0].param_groups
    print(f"param groups after training: {len(groups)} (head; backbone from epoch {args.unfreeze_epoch})")
    return trainer


if __name__ == "__main__":
    main()
