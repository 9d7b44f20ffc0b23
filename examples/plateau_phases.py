"""Phases that end when the validation metric plateaus, with Lightning's EarlyStopping for the last one.

    python examples/plateau_phases.py [--epochs 12]

The head trains alone until ``val_acc`` stops improving for 2 validation runs (at most 6 epochs);
the weights of that stage's best epoch are put back, and then the whole backbone trains, with a
cosine schedule over the rest of the run. ``EarlyStopping`` ends the run, counting only from the
last phase's start. The data is scikit-learn's handwritten digits; the backbone starts from random
weights (nothing is downloaded), so the example shows the mechanics, not a pretrained backbone's gain.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from finetune_strategies import FinetuningStrategy, TrainableMonitor, Trainer, describe_schedule
from finetune_strategies.demo import digits
from finetune_strategies.image import ImageClassificationData, ImageClassifier

STRATEGY = {
    "strategy": "phases",
    "monitor": "val_acc",
    "mode": "max",
    "patience": 2,
    "max_epochs": 6,  # the head-only stage runs 6 epochs at most
    "phases": [{"name": "backbone", "lr_scheduler": "cosine"}],
    "train_bn": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    images, targets = digits()
    data = ImageClassificationData.from_arrays(
        images[:300], targets[:300], images[300:400], targets[300:400],
        batch_size=32, image_size=32, augment=False,
    )  # fmt: skip
    model = ImageClassifier(num_classes=10, backbone="test_resnet", pretrained=False, lr=3e-3)
    print(describe_schedule(model, STRATEGY, max_epochs=args.epochs))

    monitor = TrainableMonitor(log=False)
    stop = EarlyStopping(monitor="val_acc", mode="max", patience=3)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[monitor, stop],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.finetune(model, data, strategy=STRATEGY)
    strategy = next(c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))
    print("transitions:")
    for transition in strategy.transitions:
        print(f"  {transition}")
    for record in monitor.records:
        print(f"  epoch {record.epoch}: {record.trainable_params:>6} parameters train")
    stopped = f"EarlyStopping stopped after epoch {stop.stopped_epoch}" if stop.stopped_epoch else "ran every epoch"
    print(f"{stopped}; validation accuracy {float(trainer.callback_metrics['val_acc']):.3f}")


if __name__ == "__main__":
    main()
