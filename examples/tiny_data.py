"""Write a tiny ImageFolder dataset (train / val / predict) to try the examples and the CLI.

    python examples/tiny_data.py data/tiny

Class ``dark`` holds dark noisy squares and class ``bright`` bright ones, so a model can learn them
in a few epochs on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("bright", "dark")


def make_tiny_dataset(root: str | Path, per_class: int = 8, size: int = 16, seed: int = 0) -> Path:
    """Create ``root/train``, ``root/val`` (ImageFolder layout) and ``root/predict`` (flat)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _square(rng, name, size).save(folder / f"{name}_{i}.png")
    predict = root / "predict"
    predict.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        _square(rng, CLASSES[i % 2], size).save(predict / f"image_{i}.png")
    return root


def _square(rng: np.random.Generator, name: str, size: int) -> Image.Image:
    mean = 190 if name == "bright" else 60
    pixels = np.clip(rng.normal(mean, 35, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("root", nargs="?", default="data/tiny", help="output folder (default data/tiny)")
    parser.add_argument("--per_class", type=int, default=8)
    args = parser.parse_args()
    print(f"Wrote {make_tiny_dataset(args.root, args.per_class)}")
