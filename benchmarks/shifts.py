"""The three kinds of distribution shift of :mod:`benchmarks.shift_bench`, made offline from scikit-learn's digits.

The pretrained backbone is the demo's: a small timm ResNet trained on the digits 0-4 in four
orientations (:func:`finetune_strategies.demo.experiment.pretrain`). Every shift below starts from it:

* **input-level** - the pretraining classes (0-4, upright) under pixel-level corruptions: Gaussian noise,
  Gaussian blur and contrast inversion. Training, validation and the in-distribution test draw each
  image's corruption and its severity (1 to 3) at random; the out-of-distribution test shows the same
  corruptions at severity 5, which no training image had.
* **feature-level** - the pretraining classes drawn as hollow strokes (each stroke replaced by its outline, a
  morphological gradient): the classes, the background and the edges the first layers detect stay, the
  stroke structure the middle layers combine them into changes. The out-of-distribution test adds a shear.
* **output-level** - new classes (5-9), clean images: the demo's own task. The out-of-distribution test
  is the same test images with Gaussian noise (severity 2).

For the input- and feature-level shifts the labels are the pretraining classes, so the new head starts from
the pretrained head's rows of the upright classes; for the output-level shift it starts from random weights.
The test images of the pretraining classes are the ones the pretraining held out; the shots and the
validation images are drawn, per seed, from the others (the backbone saw them clean, never shifted).
Train, validation and test are disjoint by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from finetune_strategies.demo.experiment import split_classes

Shift = Literal["input", "feature", "output"]
SHIFTS: tuple[Shift, ...] = ("input", "feature", "output")
SIZE = 32
"""The side of the shifted images, in pixels: the demo's image size."""

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def upsample(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """8x8 digits (uint8) as ``size`` x ``size`` float images in [0, 1] (cubic spline zoom)."""
    zoom = size / images.shape[-1]
    big = np.stack([ndimage.zoom(image.astype(np.float32) / 255.0, zoom, order=3) for image in images])
    return np.asarray(np.clip(big, 0.0, 1.0))


def noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.08, 0.16, 0.24, 0.32, 0.45)[severity - 1]
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0)


def blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.8, 1.3, 1.8, 2.4, 3.2)[severity - 1]
    return np.asarray(ndimage.gaussian_filter(image, sigma))


def invert(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """White digits on black become dark digits on a light ground, with less contrast at higher severity."""
    contrast = (1.0, 0.85, 0.7, 0.55, 0.35)[severity - 1]
    return np.clip(0.5 + contrast * (0.5 - image), 0.0, 1.0)


CORRUPTIONS: dict[str, Corruption] = {"noise": noise, "blur": blur, "invert": invert}


def hollow(image: np.ndarray, width: int = 3) -> np.ndarray:
    """Each stroke as its outline: the grey-level dilation minus the erosion over ``width`` x ``width``."""
    size = (width, width)
    outline = ndimage.grey_dilation(image, size=size) - ndimage.grey_erosion(image, size=size)
    return np.asarray(np.clip(outline, 0.0, 1.0))


def shear(image: np.ndarray, amount: float = 0.35) -> np.ndarray:
    """A horizontal shear about the image's centre."""
    matrix = np.array([[1.0, 0.0], [amount, 1.0]])
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - matrix @ centre
    return np.asarray(ndimage.affine_transform(image, matrix, offset=offset, order=1))


def corrupt(images: np.ndarray, severities: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Each image under one of :data:`CORRUPTIONS` drawn at random, at a severity drawn from ``severities``."""
    names = list(CORRUPTIONS)
    out = []
    for image in images:
        name = names[int(rng.integers(len(names)))]
        out.append(CORRUPTIONS[name](image, int(rng.choice(list(severities))), rng))
    return np.stack(out)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] as uint8 in [0, 255]."""
    return np.asarray(np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8))


@dataclass(frozen=True)
class ShiftSplit:
    """One seed's data for one shift: uint8 images and class indices (0-based, in ``classes`` order)."""

    shift: Shift
    classes: tuple[int, ...]
    train: tuple[np.ndarray, list[int]]
    val: tuple[np.ndarray, list[int]]
    test: tuple[np.ndarray, list[int]]
    ood_test: tuple[np.ndarray, list[int]]
    ood: str
    """What the out-of-distribution test set is."""
    indices: tuple[list[int], list[int], list[int]]
    """The digits' indices of the train, validation and test images (for the disjointness check)."""


def draw(
    targets: np.ndarray, pool: Sequence[int], classes: Sequence[int], counts: Sequence[int | None], seed: int
) -> list[list[int]]:
    """Per class, the class's images in ``pool`` cut into disjoint parts of ``counts`` images (None: the rest), as
    the demo draws them (:func:`~finetune_strategies.demo.experiment.split_classes`)."""
    in_pool = np.full(len(targets), -1)
    in_pool[list(pool)] = targets[list(pool)]
    return split_classes(in_pool, tuple(classes), tuple(counts), np.random.default_rng(2000 + seed))


def make_split(
    shift: Shift,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int,
    pretrain_classes: tuple[int, ...],
    new_classes: tuple[int, ...],
    pretrain_seen: Sequence[int],
    pretrain_held: Sequence[int],
    shots: int,
    val_per_class: int,
    test_per_class: int | None,
) -> ShiftSplit:
    """One seed's split of ``shift`` (see the module docstring). ``pretrain_seen`` / ``pretrain_held`` are the
    indices of the pretraining classes' images the pretraining trained on / held out."""
    rng = np.random.default_rng(3000 + seed)
    if shift == "output":
        classes = new_classes
        pool = [int(i) for i in np.flatnonzero(np.isin(targets, classes))]
        train, val, test = draw(targets, pool, classes, (shots, val_per_class, test_per_class), seed)
    else:
        classes = pretrain_classes
        train, val = draw(targets, pretrain_seen, classes, (shots, val_per_class), seed)
        (test,) = draw(targets, pretrain_held, classes, (test_per_class,), seed)
    clean = {name: upsample(images[part]) for name, part in (("train", train), ("val", val), ("test", test))}
    if shift == "input":
        shifted = {name: corrupt(pixels, (1, 2, 3), rng) for name, pixels in clean.items()}
        ood, ood_pixels = "the same corruptions at severity 5", corrupt(clean["test"], (5,), rng)
    elif shift == "feature":
        shifted = {name: np.stack([hollow(image) for image in pixels]) for name, pixels in clean.items()}
        ood, ood_pixels = "hollow strokes, sheared", np.stack([shear(image) for image in shifted["test"]])
    else:
        shifted = clean
        ood, ood_pixels = "Gaussian noise (severity 2)", np.stack([noise(image, 2, rng) for image in clean["test"]])

    def labelled(part: list[int], pixels: np.ndarray) -> tuple[np.ndarray, list[int]]:
        return to_uint8(pixels), [classes.index(int(t)) for t in targets[part]]

    return ShiftSplit(
        shift,
        tuple(classes),
        labelled(train, shifted["train"]),
        labelled(val, shifted["val"]),
        labelled(test, shifted["test"]),
        labelled(test, ood_pixels),
        ood,
        (train, val, test),
    )
