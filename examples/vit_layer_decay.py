"""Layer-wise learning-rate decay on a timm ViT: the BEiT / MAE fine-tuning recipe, as one option.

    python examples/vit_layer_decay.py [--pretrained] [--epochs 3] [--decay 0.75]

Every block of the ViT gets its own param group, named after it, with lr ``lr * decay ** k`` where
``k`` counts the blocks above it; the head keeps the model's own lr. Unlike timm's ``lr_scale``,
the groups are ordinary param groups: every torch LR scheduler, Lightning's LearningRateMonitor,
DeepSpeed (``no_freeze_deepspeed``), checkpoints and resume see them. The data is scikit-learn's
handwritten digits, resized to 32 px; ``--pretrained`` loads timm's ImageNet weights (needs the hub).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console

from finetune_strategies import Trainer, describe_schedule
from finetune_strategies.demo import digits
from finetune_strategies.image import ImageClassificationData, ImageClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", action="store_true", help="timm's ImageNet weights (downloads them)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--decay", type=float, default=0.75)
    args = parser.parse_args()

    images, targets = digits()
    data = ImageClassificationData.from_arrays(
        images[:300], targets[:300], images[300:400], targets[300:400],
        batch_size=32, image_size=32, augment=False,
    )  # fmt: skip
    model = ImageClassifier(
        num_classes=10,
        backbone="vit_tiny_patch16_224",
        pretrained=args.pretrained,
        backbone_kwargs={"img_size": 32, "patch_size": 8, "depth": 6},
        optimizer="adamw",
        lr=1e-3,
        scheduler="cosine",
    )
    strategy = {"strategy": "no_freeze", "layer_lr_decay": args.decay}

    # The plan, from the same code that runs during training.
    Console(width=140).print(describe_schedule(model, strategy, max_epochs=args.epochs).table())

    with tempfile.TemporaryDirectory() as logs:
        logger = CSVLogger(logs, name="vit")
        trainer = Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            logger=logger,
            callbacks=[LearningRateMonitor(logging_interval="epoch")],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.finetune(model, data, strategy=strategy)
        with open(Path(logger.log_dir) / "metrics.csv") as handle:
            columns = [c for c in next(csv.reader(handle)) if c.startswith("lr-")]
    print("LearningRateMonitor columns:", ", ".join(columns))
    print("param groups (lr at the start, and after the cosine schedule):")
    for group in trainer.optimizers[0].param_groups:
        name = group.get("name", "head (the model's group)")
        print(f"  {name:<36} {group['initial_lr']:.2e} -> {group['lr']:.2e}  ({len(group['params'])} tensors)")
    print(f"validation accuracy: {float(trainer.callback_metrics['val_acc']):.3f}")


if __name__ == "__main__":
    main()
