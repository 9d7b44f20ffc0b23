"""Fine-tune a plain timm or torchvision model without naming its backbone.

    python examples/any_model.py [--model timm|torchvision|compiled] [--imagenet] [--epochs 3]

The LightningModule below holds the model as ``self.net`` and says nothing about what to freeze: no
``backbone`` attribute, no ``modules_to_freeze()``, no ``attr_names``. The strategy asks
:func:`finetune_strategies.find_anatomy`, which finds the model's backbone, its head and its layers
(printed first, for one model of every family known, a compiled one too), freezes the backbone and
trains the head, then unfreezes the backbone.

Offline, the "pretrained" weights come from a short pretraining on scikit-learn's digits 0-4, saved to
a file that timm's own loader reads (``pretrained=True, pretrained_cfg_overlay={"file": ...}``), which
drops the old classifier; the fine-tuning task is digits 5-9, resized to 16 px. ``--imagenet`` loads
the ImageNet weights instead (needs the hub). ``--model compiled`` wraps the model in ``torch.compile``:
on a CPU, inductor's first compile takes minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer, describe_schedule, find_anatomy
from finetune_strategies.demo import digits

QUIET: dict[str, Any] = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
QUIET["enable_model_summary"] = False


class Classifier(pl.LightningModule):
    """Any classifier; Adam over the parameters that train when the optimizer is built."""

    def __init__(self, net: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(images)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        return nn.functional.cross_entropy(self(images), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        self.log("val_acc", (self(images).argmax(-1) == targets).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def build(kind: str, weights: Path | None, imagenet: bool) -> nn.Module:
    """A 5-class resnet18 whose other weights come from ``weights`` (or ImageNet), its classifier new."""
    if kind == "torchvision":
        model = torchvision.models.resnet18(weights="DEFAULT" if imagenet else None)
        if weights is not None:
            model.load_state_dict(torch.load(weights, weights_only=True))
        model.fc = nn.Linear(model.fc.in_features, 5)
        return model
    overlay = {"file": str(weights)} if weights is not None else None
    model = timm.create_model("resnet18", pretrained=imagenet or weights is not None, pretrained_cfg_overlay=overlay)
    model.reset_classifier(5)
    return torch.compile(model) if kind == "compiled" else model  # type: ignore[return-value]


def pretrain(kind: str, epochs: int, folder: Path) -> Path:
    """Train a resnet18 on digits 0-4 and save its weights, the stand-in for a hub download."""
    arch = "torchvision" if kind == "torchvision" else "timm"
    model = torchvision.models.resnet18(num_classes=1000) if arch == "torchvision" else timm.create_model("resnet18")
    classifier = Classifier(model)
    train, _ = loaders(range(5))
    Trainer(max_epochs=epochs, **QUIET).fit(classifier, train)  # every weight trains: no strategy
    path = folder / f"{arch}_resnet18_digits.pth"
    torch.save(model.state_dict(), path)
    return path


def show_families() -> None:
    """What the anatomy finds in one model of each family."""
    models: dict[str, nn.Module] = {
        "timm vit_tiny": timm.create_model("vit_tiny_patch16_224", num_classes=10, depth=2),
        "torchvision resnet18": torchvision.models.resnet18(num_classes=10),
        "compiled timm resnet18": torch.compile(timm.create_model("resnet18", num_classes=10)),  # type: ignore[dict-item]
    }
    if importlib.util.find_spec("transformers") is not None:  # the [text] extra
        import transformers

        config = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        models["transformers BERT"] = transformers.AutoModelForSequenceClassification.from_config(config)
    for name, model in models.items():
        anatomy = find_anatomy(model)
        print(f"{name}: {anatomy.describe()}")
        print(f"    layers: {', '.join(layer.name for layer in anatomy.layers)}")


def loaders(classes: range) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of the digits of ``classes``, as 3-channel 16 px images, labels from 0."""
    images, targets = digits()
    keep = [i for i, t in enumerate(targets) if t in classes]
    x = torch.tensor(images[keep], dtype=torch.float32).div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    x = nn.functional.interpolate(x, size=16, mode="bilinear")
    y = torch.tensor(targets[keep]) - classes.start
    cut = len(keep) * 3 // 4
    train, val = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=len(val))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["timm", "torchvision", "compiled"], default="timm")
    parser.add_argument("--imagenet", action="store_true", help="ImageNet weights (downloads them)")
    parser.add_argument("--pretrain_epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)

    show_families()
    with tempfile.TemporaryDirectory() as folder:
        weights = None if args.imagenet else pretrain(args.model, args.pretrain_epochs, Path(folder))
        model = Classifier(build(args.model, weights, args.imagenet))
    strategy = ("freeze_unfreeze", 1)
    print(describe_schedule(model, strategy, max_epochs=args.epochs))
    train, val = loaders(range(5, 10))
    trainer = Trainer(max_epochs=args.epochs, **QUIET)
    trainer.finetune(model, train_dataloaders=train, val_dataloaders=val, strategy=strategy)
    print(f"{args.model}: val_acc {trainer.callback_metrics['val_acc']:.3f} on digits 5-9 after {args.epochs} epochs")


if __name__ == "__main__":
    main()
