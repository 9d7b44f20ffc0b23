"""LoRA on a timm ViT: adapters first, then everything; a checkpoint that keeps only what trained; merge and export.

python examples/lora_vit.py --epochs 4 --unfreeze_epoch 2

Needs peft: pip install 'finetune-strategies[peft]'. Runs offline: a randomly initialised
vit_small_patch16_224, saved to a file, stands in for pretrained weights (pass --pretrained PATH for
real ones), and the images are generated (bright vs dark).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file

from finetune_strategies import Trainer, merge_adapters
from finetune_strategies.checkpointing.trainable_only import RECORD_KEY
from finetune_strategies.image import ImageClassificationData, ImageClassifier


def images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    pixels = rng.normal(60 + 120 * labels[:, None, None, None], 30, (n, size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--unfreeze_epoch", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=12, help="transformer blocks (ViT-S has 12)")
    parser.add_argument("--pretrained", type=Path, help="a weight file for the backbone")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="lora_vit_")))
    args = parser.parse_args()
    backbone_kwargs = {"img_size": args.image_size, "depth": args.depth}
    if args.pretrained is None:  # stand-in for downloaded weights
        torch.manual_seed(0)
        args.pretrained = args.out / "vit_small.safetensors"
        args.out.mkdir(parents=True, exist_ok=True)
        save_file(
            timm.create_model("vit_small_patch16_224", num_classes=0, **backbone_kwargs).state_dict(),
            str(args.pretrained),
        )

    model = ImageClassifier(
        num_classes=2,
        backbone="vit_small_patch16_224",
        pretrained=str(args.pretrained),
        backbone_kwargs=backbone_kwargs,
        optimizer="adamw",
        lr=1e-3,
    )
    train, val = images(32, args.image_size, 0), images(16, args.image_size, 1)
    data = ImageClassificationData.from_arrays(*train, *val, batch_size=8, image_size=args.image_size, augment=False)
    checkpoints = ModelCheckpoint(dirpath=args.out / "checkpoints", save_top_k=-1, filename="{epoch}")
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    strategy = {
        "strategy": "lora",
        "r": 8,
        "alpha": 16,
        "target_modules": "re:.*(qkv|fc1|fc2)$",
        "unfreeze_epoch": args.unfreeze_epoch,
    }
    trainer.finetune(model, data, strategy=strategy)

    # Checkpoints of the adapter phase keep the adapters and the head, and a fingerprint of the rest.
    for path in sorted((args.out / "checkpoints").glob("*.ckpt")):
        saved = torch.load(path, weights_only=True)
        left_out = len(saved.get(RECORD_KEY, {}).get("frozen", []))
        print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB, {left_out} frozen tensors left out")
    first = args.out / "checkpoints" / "epoch=0.ckpt"
    restored = ImageClassifier.load_from_checkpoint(first)  # the frozen weights come from --pretrained again
    print(f"loaded {first.name}: {sum(p.numel() for p in restored.parameters()):,} parameters")

    # Fold the adapters into the weights and export a plain timm backbone.
    model.eval()
    batch = torch.randn(2, 3, args.image_size, args.image_size)
    with torch.no_grad():
        before = model(batch)
        merge_adapters(model)
        after = model(batch)
    print(f"merged: largest output change {(before - after).abs().max().item():.1e}")
    export = model.save_backbone(args.out / "vit_small_lora_merged.safetensors")
    plain = timm.create_model(
        "vit_small_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(export)},
        num_classes=0,
        **backbone_kwargs,
    )
    plain.eval()
    with torch.no_grad():
        same = torch.allclose(plain(batch), model.backbone(batch), atol=1e-5)
    print(f"exported {export.name}; timm loads it: {same}")


if __name__ == "__main__":
    main()
