"""LP-FT, L2-SP, WiSE-FT and the drift monitor on one pretrained backbone.

    python examples/recipes.py [--pretrain_epochs 3] [--epochs 6] [--out recipes-output]

A small timm backbone is pretrained for a few epochs on scikit-learn's digits 0-4 (nothing is
downloaded) and saved. It is then fine-tuned on 5 images per class of digits 5-9, twice:

1. ``lp_ft``: a linear probe on cached features, then everything at lr / 10;
2. ``freeze_unfreeze`` with ``l2_sp`` (a pull toward the pretrained weights) and the ``WiSEFT``
   callback, which picks the interpolation with the pretrained backbone that validates best.

A ``DriftMonitor`` follows both runs; the example prints the plan of the first, WiSE-FT's table and
the drift per layer, and writes ``drift.png``. The demo (``finetune-strategies demo``) measures these
recipes properly, on a test split and over seeds; this example shows how to use them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from rich.console import Console

from finetune_strategies import DriftMonitor, Trainer, WiSEFT, describe_schedule, plot_drift
from finetune_strategies.demo import digits
from finetune_strategies.image import ImageClassificationData, ImageClassifier

RECIPES = {
    "lp_ft": {"strategy": "lp_ft", "probe_epochs": 2},
    "freeze_unfreeze + l2_sp": {"strategy": "freeze_unfreeze", "unfreeze_epoch": 2, "l2_sp": 0.01},
}


def trainer(epochs: int, *callbacks: pl.Callback) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain_epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("recipes-output"))
    args = parser.parse_args()
    console = Console(width=120)

    images, targets = digits()
    old, new = np.flatnonzero(targets < 5), np.flatnonzero(targets >= 5)
    pl.seed_everything(0, verbose=False)
    pretraining = ImageClassificationData.from_arrays(
        images[old], targets[old], val_split=0.1, batch_size=32, image_size=32, augment=False
    )
    model = ImageClassifier(num_classes=5, backbone="test_resnet", pretrained=False, lr=3e-3)
    trainer(args.pretrain_epochs).fit(model, pretraining)
    weights = model.save_backbone(args.out / "pretrained.safetensors")

    shots = np.concatenate([new[targets[new] == c][:5] for c in range(5, 10)])
    held = np.setdiff1d(new, shots)[:200]
    data = ImageClassificationData.from_arrays(
        images[shots], targets[shots] - 5, images[held], targets[held] - 5, batch_size=5, image_size=32, augment=False
    )
    drift = {}
    for name, spec in RECIPES.items():
        pl.seed_everything(0, verbose=False)
        model = ImageClassifier(num_classes=5, backbone="test_resnet", pretrained=weights, lr=1e-2)
        if name == "lp_ft":
            console.print(describe_schedule(model, spec, max_epochs=args.epochs).table())
        monitor, wise = DriftMonitor(log=False), WiSEFT(alphas=(0.0, 0.5, 1.0))
        callbacks = [monitor, wise] if "l2_sp" in name else [monitor]
        run = trainer(args.epochs, *callbacks)
        run.finetune(model, data, strategy=spec)
        drift[name] = monitor.history
        if wise.result is not None:  # the table WiSE-FT printed, in numbers
            console.print(f"{name}: WiSE-FT kept a={wise.result.best:g} (val_acc per a: {wise.result.scores})")
        else:
            console.print(f"{name}: val_acc {float(run.callback_metrics['val_acc']):.3f}")
        last = ", ".join(f"{layer} {value:.3f}" for layer, value in drift[name][-1].items())
        console.print(f"{name}: drift after the last epoch: {last}")
    console.print(f"drift plot: {plot_drift(drift, args.out / 'drift.png')}")


if __name__ == "__main__":
    main()
