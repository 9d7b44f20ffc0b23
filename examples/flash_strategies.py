"""Flash's fine-tuning flow, `trainer.finetune(model, datamodule, strategy=...)`, with each of the
four built-in strategies, as in Flash's documentation.

    python examples/flash_strategies.py                    # tiny generated data, random weights
    python examples/flash_strategies.py --data hymenoptera_data --pretrained --backbone resnet18

`--data` is a folder with `train/<class>/...` and `val/<class>/...` images. Without it a tiny
dataset is generated in a temporary folder, so the example runs anywhere in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tiny_data import make_tiny_dataset

from finetune_strategies import Trainer
from finetune_strategies.image import ImageClassificationData, ImageClassifier

# The four strategies with the settings of Flash's documentation.
STRATEGIES = {
    "no_freeze": "no_freeze",  # backbone and head train from the start
    "freeze": "freeze",  # the backbone stays frozen throughout
    "freeze_unfreeze": ("freeze_unfreeze", 7),  # the backbone is unfrozen at epoch 7
    "unfreeze_milestones": ("unfreeze_milestones", ((3, 8), 2)),  # last 2 layers at 3, the rest at 8
}


def run(strategy: str, data: Path, backbone: str, pretrained: bool, image_size: int, epochs: int) -> float:
    datamodule = ImageClassificationData.from_folders(
        train_folder=data / "train",
        val_folder=data / "val",
        batch_size=4,
        num_workers=0,
        image_size=image_size,
    )
    model = ImageClassifier(backbone=backbone, num_classes=datamodule.num_classes, pretrained=pretrained)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.finetune(model, datamodule, strategy=STRATEGIES[strategy])
    return float(trainer.callback_metrics["val_acc"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--strategy", choices=[*STRATEGIES, "all"], default="all")
    parser.add_argument("--data", type=Path, help="folder with train/ and val/ class folders")
    parser.add_argument("--backbone", default="test_resnet", help="timm name or torchvision:<name>")
    parser.add_argument("--pretrained", action="store_true", help="download pretrained weights")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--max_epochs", type=int, default=10, help="10 reaches every phase above")
    args = parser.parse_args(argv)
    names = list(STRATEGIES) if args.strategy == "all" else [args.strategy]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_tiny_dataset(Path(tmp) / "tiny")
        results = {
            name: run(name, data, args.backbone, args.pretrained, args.image_size, args.max_epochs) for name in names
        }
    for name, accuracy in results.items():
        print(f"{name:>20}: val_acc {accuracy:.2f}")
    return results


if __name__ == "__main__":
    main()
