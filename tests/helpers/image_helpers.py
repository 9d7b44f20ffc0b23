"""Generated image folders and tiny settings for the image-classification tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from conftest import QUIET_TRAINER, Recorder
from PIL import Image

from finetune_strategies import Trainer

BACKBONE = "test_resnet"  # a 0.37M-parameter timm ResNet with BatchNorm, meant for tests
SIZE = 16  # input size in pixels; tiny keeps each run well under a second

torch.set_num_threads(1)  # tiny models: one thread is fastest and avoids contention


def write_image(path: Path, rng: np.random.Generator, colour: int, size: int = 10, mode: str = "RGB") -> Path:
    """An image whose mean brightness depends on ``colour`` (0 dark, 1 bright), plus noise."""
    pixels = np.clip(rng.normal(60 + 120 * colour, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    image.convert(mode).save(path)
    return path


def make_folder(root: Path, classes: tuple[str, ...] = ("ants", "bees"), per_class: int = 4, seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png``; class i is darker than class i + 1."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", rng, index % 2)
    return root


def trainer(max_epochs: int, **kwargs: Any) -> Trainer:
    return Trainer(max_epochs=max_epochs, **{**QUIET_TRAINER, **kwargs})


class TrainableLog(Recorder):
    """A :class:`Recorder` for CLI runs (``--trainer.callbacks``): writes what it recorded to ``path`` as JSON
    when the fit ends, since the CLI keeps its callbacks to itself."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        recorded = {"requires_grad": self.requires_grad, "group_names": self.group_names, "group_lrs": self.group_lrs}
        self.path.write_text(json.dumps(recorded))

    @staticmethod
    def callbacks_flag(path: Path) -> str:
        """The ``--trainer.callbacks`` flag that adds one writing to ``path``."""
        spec = [{"class_path": "image_helpers.TrainableLog", "init_args": {"path": str(path)}}]
        return f"--trainer.callbacks={json.dumps(spec)}"

    @staticmethod
    def read(path: Path) -> dict[str, Any]:
        recorded: dict[str, Any] = json.loads(path.read_text())
        return recorded


# ---------------------------------------------------------------------------------- CLI tests
def cli_folders(root: Path) -> Path:
    """``root/train`` (4 images per class), ``root/val`` and ``root/predict`` (2 each), for CLI runs."""
    make_folder(root / "train", per_class=4)
    make_folder(root / "val", per_class=2, seed=1)
    make_folder(root / "predict", per_class=2, seed=2)
    return root


def model_data_args(data: Path) -> list[str]:
    """The tiny backbone and the data of :func:`cli_folders`, as command-line arguments."""
    return [
        f"--model.backbone={BACKBONE}",
        "--model.pretrained=false",
        "--model.image_size=16",
        f"--data.train_folder={data / 'train'}",
        f"--data.val_folder={data / 'val'}",
        "--data.batch_size=4",
    ]


def fit_args(data: Path, out: Path, *extra: str, epochs: int = 3) -> list[str]:
    """``fit`` on :func:`cli_folders` with the tiny backbone, writing under ``out``, then ``extra``."""
    return [
        "fit",
        *model_data_args(data),
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]
