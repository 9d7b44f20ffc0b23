"""Gradual unfreezing with discriminative learning rates: ULMFiT's recipe, on a timm ResNet.

    python examples/gradual_unfreezing.py [--epochs 8] [--start 1]

``("gradual_unfreeze", start)`` trains the head alone until ``start``, then unfreezes one more block
of the backbone per epoch, from the top. ``layer_lr_decay=1/2.6`` gives each block ULMFiT's
discriminative rate: 2.6 times lower than the block above it. The table printed first is the plan;
the one printed after training is what happened, measured by ``TrainableMonitor``. The backbone
here starts from random weights (nothing is downloaded), so the accuracy says little: the example
shows the mechanics. With a pretrained backbone (``ImageClassifier(pretrained=True)``) the same
strategy is ULMFiT's recipe.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from finetune_strategies import TrainableMonitor, Trainer, describe_schedule
from finetune_strategies.demo import digits
from finetune_strategies.image import ImageClassificationData, ImageClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--start", type=int, default=1)
    args = parser.parse_args()

    images, targets = digits()
    data = ImageClassificationData.from_arrays(
        images[:300], targets[:300], images[300:400], targets[300:400],
        batch_size=32, image_size=32, augment=False,
    )  # fmt: skip
    model = ImageClassifier(num_classes=10, backbone="test_resnet", pretrained=False, lr=3e-3, scheduler="cosine")
    strategy = {"strategy": "gradual_unfreeze", "start_epoch": args.start, "layer_lr_decay": 1 / 2.6}

    console = Console(width=150)
    console.print(describe_schedule(model, strategy, max_epochs=args.epochs, train_bn=False).table())

    monitor = TrainableMonitor(log=False)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.finetune(model, data, strategy=strategy, train_bn=False)
    print("what happened:")
    for record in monitor.records:
        groups = ", ".join(
            f"{n or 'head'} {lr:.1e}" for n, lr in zip(record.group_names, record.group_lrs, strict=True)
        )
        print(f"  epoch {record.epoch}: {record.trainable_params:>6} of {record.total_params} train; {groups}")
    print(f"validation accuracy: {float(trainer.callback_metrics['val_acc']):.3f}")


if __name__ == "__main__":
    main()
