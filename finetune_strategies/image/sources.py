"""Where images come from, checked early: class folders, file lists, arrays and tensors.

Every source becomes a :class:`Split` of samples (file paths, or uint8 arrays in ``HWC`` / ``HW``
layout) with integer targets. Images are decoded to RGB ``PIL.Image`` objects when a sample is read,
so grayscale and RGBA inputs work with any backbone.

Unreadable files: :func:`drop_unreadable` opens every file once and runs PIL's ``verify()``. With
``on_bad_image="skip"`` (the default) the files that fail are dropped with one warning that counts
them; with ``"error"`` they raise :class:`~finetune_strategies.errors.ImageDataError`. A file that
passes the check but fails to decode later raises ``ImageDataError`` naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from finetune_strategies.errors import ImageDataError, MissingPathError
from finetune_strategies.tasks.targets import encode_targets as encode_class_targets
from finetune_strategies.tasks.targets import listing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
BadImagePolicy = Literal["skip", "error"]


@dataclass
class Split:
    """The samples of one split: file paths or uint8 arrays, their targets and display ids."""

    items: list[Any]
    targets: list[int] | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> Split:
        return Split(
            [self.items[i] for i in indices],
            None if self.targets is None else [self.targets[i] for i in indices],
            [self.ids[i] for i in indices],
        )


# ------------------------------------------------------------------------------------------- decoding
def load_image(item: Any) -> Image.Image:
    """Decode a sample (a path or a uint8 array) to an RGB ``PIL.Image``."""
    if isinstance(item, np.ndarray):
        pixels = item.squeeze(-1) if item.ndim == 3 and item.shape[-1] == 1 else item
        decoded: Image.Image = Image.fromarray(pixels).convert("RGB")
        return decoded
    try:
        with Image.open(item) as image:
            decoded = image.convert("RGB")
            return decoded
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDataError(
            f"Cannot decode image {str(item)!r} ({type(error).__name__}: {error}). It passed the check at "
            "setup but is damaged; remove or replace it."
        ) from error


class ImageDataset(Dataset[Any]):
    """``(image, target)`` pairs, or images alone for an unlabelled split, after ``transform``."""

    def __init__(self, split: Split, transform: Callable[[Any], Any]) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Any:
        image = self.transform(load_image(self.split.items[index]))
        if self.split.targets is None:
            return image
        return image, self.split.targets[index]


# -------------------------------------------------------------------------------------------- folders
def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _check_folder(folder: str | Path, what: str) -> Path:
    if not isinstance(folder, (str, Path)):
        raise ImageDataError(f"`{what}` must be a folder path, got {folder!r} ({type(folder).__name__}).")
    root = Path(folder)
    if not root.exists():
        raise MissingPathError(f"`{what}` folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise ImageDataError(f"`{what}` must be a folder, but {str(root)!r} is a file.")
    return root


def scan_class_folders(folder: str | Path, what: str, classes: list[str] | None = None) -> tuple[Split, list[str]]:
    """Read an ImageFolder tree ``folder/<class>/<image>``; ``classes`` fixes the class order."""
    root = _check_folder(folder, what)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if _is_image(p)]
        hint = f" It holds {len(loose)} image(s) directly; move them into class subfolders." if loose else ""
        raise ImageDataError(
            f"`{what}` folder {str(root)!r} has no class subfolders; expected {root}/<class>/<image>.{hint}"
        )
    names = [d.name for d in class_dirs]
    if classes is None:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ImageDataError(
            f"`{what}` folder {str(root)!r} has classes that the training data lacks: {listing(unknown)}. "
            f"Training classes: {listing(classes)}."
        )
    items: list[Any] = []
    targets: list[int] = []
    for class_dir in class_dirs:
        images = _images_under(class_dir)
        if not images:
            raise ImageDataError(
                f"Class folder {str(class_dir)!r} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}). "
                "Add images or remove the folder."
            )
        items.extend(images)
        targets.extend([classes.index(class_dir.name)] * len(images))
    return Split(items, targets, [str(p) for p in items]), classes


def list_image_files(folder: str | Path, what: str) -> Split:
    """Every image under ``folder`` (recursively), unlabelled, for prediction."""
    root = _check_folder(folder, what)
    images = _images_under(root)
    if not images:
        raise ImageDataError(f"`{what}` folder {str(root)!r} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    return Split(list(images), None, [str(p) for p in images])


# ---------------------------------------------------------------------------------------------- files
def check_files(files: Any, what: str) -> list[Path]:
    """``files`` as Paths, after checking that it is a list of existing files."""
    if isinstance(files, (str, Path)) or not isinstance(files, Sequence):
        raise ImageDataError(f"`{what}` must be a list of image paths, got {type(files).__name__}.")
    if not files:
        raise ImageDataError(f"`{what}` is empty; give at least one image path.")
    if not all(isinstance(f, (str, Path)) for f in files):
        raise ImageDataError(f"`{what}` must hold only str or Path entries.")
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingPathError(f"{len(missing)} file(s) in `{what}` do not exist: {listing(missing)}.")
    return paths


def drop_unreadable(split: Split, policy: BadImagePolicy, what: str) -> Split:
    """Check every file of ``split`` with PIL; skip the unreadable ones (warning) or raise."""
    bad: list[tuple[int, str]] = []
    for index, item in enumerate(split.items):
        if isinstance(item, np.ndarray):
            continue
        try:
            with Image.open(item) as image:
                image.verify()
        except Exception as error:  # PIL raises many types for damaged files
            bad.append((index, f"{item} ({type(error).__name__})"))
    if not bad:
        return split
    reasons = [reason for _, reason in bad]
    if policy == "error":
        raise ImageDataError(
            f"{len(bad)} unreadable image(s) of {len(split)} in the {what} data: {listing(reasons)}. "
            "Remove them, or pass on_bad_image='skip' to skip them with a warning."
        )
    warnings.warn(
        f"Skipped {len(bad)} unreadable image(s) of {len(split)} in the {what} data: {listing(reasons)}.",
        UserWarning,
        stacklevel=2,
    )
    dropped = {i for i, _ in bad}
    kept = split.subset([i for i in range(len(split)) if i not in dropped])
    if not kept.items:
        raise ImageDataError(f"No readable image is left in the {what} data.")
    return kept


# --------------------------------------------------------------------------------------------- arrays
def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ImageDataError(f"`{what}` must hold uint8, integer or float pixels, got dtype {array.dtype}.")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or low < 0 or high > 1 + 1e-6:
            raise ImageDataError(
                f"`{what}` holds float pixels in [{low:g}, {high:g}]; float images must be scaled to [0, 1] "
                "(or pass uint8 in [0, 255])."
            )
        scaled: np.ndarray = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
        return scaled
    if low < 0 or high > 255:
        raise ImageDataError(f"`{what}` holds integer pixels in [{low:g}, {high:g}]; expected [0, 255].")
    return array.astype(np.uint8)


def _check_image_shape(shape: tuple[int, ...], what: str, channels_first: bool) -> None:
    layout = "(C, H, W) or (H, W)" if channels_first else "(H, W, C) or (H, W)"
    channel_axis = 0 if channels_first else -1
    ok = len(shape) == 2 or (len(shape) == 3 and shape[channel_axis] in (1, 3, 4))
    if not ok or 0 in shape:
        other = "from_arrays for (H, W, C)" if channels_first else "from_tensors for (C, H, W)"
        raise ImageDataError(
            f"`{what}` images must have shape {layout} with C in (1, 3, 4), got {tuple(shape)}. Use {other}."
        )


def image_arrays(data: Any, what: str, *, channels_first: bool) -> list[np.ndarray]:
    """Per-image uint8 arrays in ``HWC``/``HW`` layout from a batch or a list of images."""
    kind = "tensor" if channels_first else "array"
    convert: Callable[[Any], np.ndarray] = (lambda x: x.detach().cpu().numpy()) if channels_first else np.asarray
    expected = torch.Tensor if channels_first else np.ndarray
    if isinstance(data, expected):
        array = convert(data)
        if array.ndim not in (3, 4):
            raise ImageDataError(
                f"`{what}` must be a batch of images with 3 or 4 dimensions, got shape {tuple(array.shape)}."
            )
        images = list(array)
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if not all(isinstance(x, expected) for x in data):
            raise ImageDataError(f"`{what}` must be a {kind} batch or a list of {kind}s.")
        images = [convert(x) for x in data]
    else:
        raise ImageDataError(f"`{what}` must be a {kind} batch or a list of {kind}s, got {type(data).__name__}.")
    if not images:
        raise ImageDataError(f"`{what}` is empty; give at least one image.")
    result = []
    for image in images:
        _check_image_shape(tuple(image.shape), what, channels_first)
        if channels_first and image.ndim == 3:
            image = np.moveaxis(image, 0, -1)
        result.append(_as_uint8(np.ascontiguousarray(image), what))
    return result


# -------------------------------------------------------------------------------------------- targets
def encode_targets(targets: dict[str, Any], labels: Sequence[str] | None) -> tuple[dict[str, list[int]], list[str]]:
    """Class indices per split and the class names, from int or str targets (see
    :func:`finetune_strategies.tasks.targets.encode_targets`); raises :class:`ImageDataError`."""
    return encode_class_targets(targets, labels, error=ImageDataError)


def check_lengths(what: str, items: Sequence[Any], targets_what: str, targets: Sequence[Any]) -> None:
    """Raise unless a split has as many targets as images."""
    if len(items) != len(targets):
        raise ImageDataError(
            f"`{what}` has {len(items)} images but `{targets_what}` has {len(targets)} targets; "
            "give one target per image."
        )
