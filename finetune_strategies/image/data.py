"""``ImageClassificationData``: a LightningDataModule for class folders, file lists, arrays and tensors.

Sources are read and checked when the data module is built (missing folders, empty classes,
mismatched lengths, bad shapes fail there); images are checked once in ``setup`` (see
:mod:`finetune_strategies.image.sources` for the unreadable-image policy), and transforms are
resolved in ``setup`` too (see :mod:`finetune_strategies.image.transforms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import Unpack, override

from finetune_strategies.errors import ImageDataError
from finetune_strategies.image.backbones import imagenet_data_config
from finetune_strategies.image.sources import (
    BadImagePolicy,
    ImageDataset,
    Split,
    check_files,
    check_lengths,
    drop_unreadable,
    encode_targets,
    image_arrays,
    list_image_files,
    scan_class_folders,
)
from finetune_strategies.image.transforms import (
    Transform,
    backbone_data_config,
    build_transforms,
    with_image_size,
)
from finetune_strategies.tasks.splits import SplitDataModule
from finetune_strategies.tasks.targets import stratified_hold_out
from finetune_strategies.validation import check_bool, check_positive_int

STAGES = ("train", "val", "test", "predict")


class DataSettings(TypedDict, total=False):
    """Keyword settings shared by every ``ImageClassificationData`` constructor."""

    val_split: float
    batch_size: int
    eval_batch_size: int | None
    num_workers: int
    backbone: str | None
    image_size: int | None
    augment: bool
    transform_kwargs: dict[str, Any] | None
    train_transform: Callable[[Any], Any] | None
    eval_transform: Callable[[Any], Any] | None
    on_bad_image: BadImagePolicy
    seed: int


class ImageClassificationData(SplitDataModule):
    """Images and class targets for :class:`~finetune_strategies.image.ImageClassifier`.

    Build it from class folders (``ImageClassificationData(train_folder=...)`` or
    :meth:`from_folders`), from file lists (:meth:`from_files`), from numpy arrays
    (:meth:`from_arrays`) or from torch tensors (:meth:`from_tensors`).

    Args:
        train_folder: ImageFolder tree ``train_folder/<class>/<image>``; classes are its subfolder
            names, sorted.
        val_folder: Same layout, with a subset of the training classes.
        test_folder: Same layout, with a subset of the training classes.
        predict_folder: Any folder; every image under it is predicted.
        val_split: Fraction of the training samples held out for validation (stratified by class),
            when there is no validation source.
        batch_size: Batch size of the training dataloader (and of the others, by default).
        eval_batch_size: Batch size of the validation, test and predict dataloaders.
        num_workers: Dataloader worker processes.
        backbone: Backbone name whose timm data config sets the transforms; ``None`` takes it from the
            model being trained.
        image_size: Square input size, overriding the data config's.
        augment: Use timm's training augmentation; ``False`` trains on the evaluation transform.
        transform_kwargs: Extra ``timm.data.create_transform`` arguments for the training transform,
            e.g. ``{"hflip": 0.0, "scale": [0.5, 1.0]}``.
        train_transform: Replaces the training transform (it receives an RGB PIL image).
        eval_transform: Replaces the transform of validation, test and predict images.
        on_bad_image: ``"skip"`` unreadable images with a warning that counts them, or ``"error"``.
        seed: Seed of the ``val_split`` shuffle.
    """

    data_error = ImageDataError
    data_arguments = "{stage}_folder, {stage}_files or {stage}_data"

    def __init__(
        self,
        train_folder: str | Path | None = None,
        val_folder: str | Path | None = None,
        test_folder: str | Path | None = None,
        predict_folder: str | Path | None = None,
        *,
        val_split: float = 0.0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        backbone: str | None = None,
        image_size: int | None = None,
        augment: bool = True,
        transform_kwargs: dict[str, Any] | None = None,
        train_transform: Callable[[Any], Any] | None = None,
        eval_transform: Callable[[Any], Any] | None = None,
        on_bad_image: BadImagePolicy = "skip",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if on_bad_image not in ("skip", "error"):
            raise ImageDataError(f"`on_bad_image` must be 'skip' or 'error', got {on_bad_image!r}.")
        self.set_loading(val_split, batch_size, eval_batch_size, num_workers)
        self.backbone = backbone
        self.image_size = (
            None if image_size is None else check_positive_int("image_size", image_size, error=ImageDataError)
        )
        self.augment = check_bool("augment", augment, error=ImageDataError)
        self.transform_kwargs = dict(transform_kwargs or {})
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.on_bad_image: BadImagePolicy = on_bad_image
        self.seed = seed
        self.labels: list[str] | None = None
        self._sources: dict[str, Split | None] = dict.fromkeys(STAGES)
        self._splits: dict[str, Split | None] | None = None  # after setup's checks
        self._folder_sources(train_folder, val_folder, test_folder, predict_folder)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_folders(
        cls,
        train_folder: str | Path | None = None,
        val_folder: str | Path | None = None,
        test_folder: str | Path | None = None,
        predict_folder: str | Path | None = None,
        **settings: Unpack[DataSettings],
    ) -> ImageClassificationData:
        """Class folders in ImageFolder layout: ``<folder>/<class name>/<image>``."""
        return cls(train_folder, val_folder, test_folder, predict_folder, **settings)

    @classmethod
    def from_files(
        cls,
        train_files: Sequence[str | Path] | None = None,
        train_targets: Sequence[Any] | None = None,
        val_files: Sequence[str | Path] | None = None,
        val_targets: Sequence[Any] | None = None,
        test_files: Sequence[str | Path] | None = None,
        test_targets: Sequence[Any] | None = None,
        predict_files: Sequence[str | Path] | None = None,
        labels: Sequence[str] | None = None,
        **settings: Unpack[DataSettings],
    ) -> ImageClassificationData:
        """Image paths with targets: class indices (names from ``labels``) or class names."""
        data = cls(**settings)
        items = {}
        for stage, files in (
            ("train", train_files),
            ("val", val_files),
            ("test", test_files),
            ("predict", predict_files),
        ):
            if files is not None:
                items[stage] = list(check_files(files, f"{stage}_files"))
        data._labelled_sources(
            items, {"train": train_targets, "val": val_targets, "test": test_targets}, "files", labels
        )
        return data

    @classmethod
    def from_arrays(
        cls,
        train_data: Any = None,
        train_targets: Any = None,
        val_data: Any = None,
        val_targets: Any = None,
        test_data: Any = None,
        test_targets: Any = None,
        predict_data: Any = None,
        labels: Sequence[str] | None = None,
        **settings: Unpack[DataSettings],
    ) -> ImageClassificationData:
        """numpy images: a batch ``(N, H, W[, C])`` or a list of ``(H, W[, C])`` arrays, uint8 in
        [0, 255] or float in [0, 1]; targets as in :meth:`from_files`."""
        return cls._from_pixels(
            (train_data, val_data, test_data, predict_data),
            (train_targets, val_targets, test_targets),
            labels,
            False,
            settings,
        )

    @classmethod
    def from_tensors(
        cls,
        train_data: Any = None,
        train_targets: Any = None,
        val_data: Any = None,
        val_targets: Any = None,
        test_data: Any = None,
        test_targets: Any = None,
        predict_data: Any = None,
        labels: Sequence[str] | None = None,
        **settings: Unpack[DataSettings],
    ) -> ImageClassificationData:
        """torch images: a batch ``(N, [C,] H, W)`` or a list of ``([C,] H, W)`` tensors, uint8 in
        [0, 255] or float in [0, 1]; targets as in :meth:`from_files`."""
        return cls._from_pixels(
            (train_data, val_data, test_data, predict_data),
            (train_targets, val_targets, test_targets),
            labels,
            True,
            settings,
        )

    @classmethod
    def _from_pixels(
        cls,
        data: tuple[Any, Any, Any, Any],
        targets: tuple[Any, Any, Any],
        labels: Sequence[str] | None,
        channels_first: bool,
        settings: DataSettings,
    ) -> ImageClassificationData:
        module = cls(**settings)
        items = {
            stage: image_arrays(values, f"{stage}_data", channels_first=channels_first)
            for stage, values in zip(STAGES, data, strict=True)
            if values is not None
        }
        named = dict(zip(STAGES[:3], targets, strict=False))
        module._labelled_sources(items, named, "data", labels)
        return module

    # ------------------------------------------------------------------ sources
    def _folder_sources(self, *folders: str | Path | None) -> None:
        train, val, test, predict = folders
        if train is None and (val is not None or test is not None):
            raise ImageDataError("val_folder / test_folder need a train_folder, which defines the classes.")
        if train is not None:
            self._sources["train"], self.labels = scan_class_folders(train, "train_folder")
            for stage, folder in (("val", val), ("test", test)):
                if folder is not None:
                    self._sources[stage], _ = scan_class_folders(folder, f"{stage}_folder", self.labels)
        if predict is not None:
            self._sources["predict"] = list_image_files(predict, "predict_folder")
        self._check_val_sources()

    def _labelled_sources(
        self, items: dict[str, list[Any]], targets: dict[str, Any], kind: str, labels: Sequence[str] | None
    ) -> None:
        given = {}
        encoded: dict[str, list[int]] = {}
        for stage in STAGES[:3]:
            has_items, has_targets = stage in items, targets.get(stage) is not None
            if has_items != has_targets:
                missing = f"{stage}_targets" if has_items else f"{stage}_{kind}"
                raise ImageDataError(f"`{missing}` is missing: give {stage}_{kind} and {stage}_targets together.")
            if has_items:
                check_lengths(f"{stage}_{kind}", items[stage], f"{stage}_targets", targets[stage])
                given[f"{stage}_targets"] = targets[stage]
        if "train" not in items and ("val" in items or "test" in items):
            raise ImageDataError(f"val_{kind} / test_{kind} need train_{kind} and train_targets.")
        if given:
            encoded, self.labels = encode_targets(given, labels)
        elif labels is not None:
            self.labels = [str(label) for label in labels]
        for stage, values in items.items():
            ids = [str(v) for v in values] if kind == "files" else [str(i) for i in range(len(values))]
            stage_targets = encoded[f"{stage}_targets"] if stage != "predict" else None
            self._sources[stage] = Split(list(values), stage_targets, ids)
        self._check_val_sources()

    def _check_val_sources(self) -> None:
        if self.val_split and self._sources["val"] is not None:
            raise ImageDataError("Give validation data or val_split, not both.")
        if self.labels is not None and len(self.labels) < 2:
            raise ImageDataError(f"Classification needs at least 2 classes, got {self.labels}.")

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None when the data module holds only predict data."""
        return None if self.labels is None else len(self.labels)

    @property
    def predict_ids(self) -> list[str]:
        """File paths (or indices, for arrays) of the predict samples, in dataloader order."""
        split = self._checked_splits()["predict"]
        return [] if split is None else list(split.ids)

    # ------------------------------------------------------------------ setup
    @override
    def _checked_splits(self) -> dict[str, Split | None]:
        if self._splits is None:
            splits = {
                stage: None if split is None else drop_unreadable(split, self.on_bad_image, stage)
                for stage, split in self._sources.items()
            }
            if self.val_split and splits["train"] is not None:
                splits["train"], splits["val"] = self._hold_out(splits["train"])
            self._splits = splits
        return self._splits

    def _hold_out(self, train: Split) -> tuple[Split, Split]:
        assert train.targets is not None
        kept, held = stratified_hold_out(train.targets, self.val_split, self.seed, error=ImageDataError, what="images")
        return train.subset(kept), train.subset(held)

    def data_config(self) -> dict[str, Any]:
        """The timm data config the default transforms are built from (see the transforms module)."""
        if self.backbone is not None:
            config = backbone_data_config(self.backbone)
        else:
            model = self.trainer.lightning_module if self.trainer is not None else None
            hook = getattr(model, "data_config", None)
            config = dict(hook()) if callable(hook) else imagenet_data_config()
        return with_image_size(config, self.image_size)

    def transforms(self) -> tuple[Transform, Transform]:
        """(train, eval) transforms: the ones given, else timm's from :meth:`data_config`."""
        train, evaluation = self.train_transform, self.eval_transform
        if train is None or evaluation is None:
            default_train, default_eval = build_transforms(self.data_config(), self.augment, self.transform_kwargs)
            train = train or default_train
            evaluation = evaluation or default_eval
        return train, evaluation

    @override
    def setup(self, stage: str | None = None) -> None:
        splits = self._checked_splits()
        train_transform, eval_transform = self.transforms()
        self._datasets = {
            name: ImageDataset(split, train_transform if name == "train" else eval_transform)
            for name, split in splits.items()
            if split is not None
        }
