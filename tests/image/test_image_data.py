"""ImageClassificationData from folders, files, arrays and tensors; bad inputs; default transforms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from image_helpers import BACKBONE, SIZE, make_folder, trainer, write_image

from finetune_strategies.errors import ImageDataError, MissingPathError
from finetune_strategies.image import ImageClassificationData, ImageClassifier


def _batch(data: ImageClassificationData, stage: str = "train"):
    data.setup("fit")
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "predict": data.predict_dataloader}
    return next(iter(loader[stage]()))


def _in_order(data: ImageClassificationData, stage: str = "train"):
    """Every sample of a split in dataset order (the train loader shuffles)."""
    data.setup("fit")
    samples = [data._datasets[stage][i] for i in range(len(data._datasets[stage]))]
    if stage == "predict":
        return torch.stack(samples)
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


# ------------------------------------------------------------------------------------------ folders
def test_from_folders_reads_classes_and_batches(tmp_path):
    train = make_folder(tmp_path / "train", classes=("cat", "ant", "bee"), per_class=3)
    val = make_folder(tmp_path / "val", classes=("bee",), per_class=2)
    data = ImageClassificationData.from_folders(train, val, batch_size=4, image_size=SIZE, augment=False)
    assert data.labels == ["ant", "bee", "cat"]
    assert data.num_classes == 3
    images, _ = _batch(data)
    assert images.shape == (4, 3, SIZE, SIZE)
    assert images.dtype == torch.float32
    _, val_targets = _batch(data, "val")
    assert val_targets.tolist() == [1, 1]  # bee keeps the training index


def test_val_split_is_stratified_and_seeded(tmp_path):
    train = make_folder(tmp_path / "train", classes=("a", "b"), per_class=5)
    data = ImageClassificationData(train, val_split=0.4, image_size=SIZE)
    data.setup("fit")
    splits = data._checked_splits()
    assert sorted(splits["val"].targets) == [0, 0, 1, 1]
    assert len(splits["train"]) == 6
    assert not set(splits["train"].ids) & set(splits["val"].ids)
    again = ImageClassificationData(train, val_split=0.4, image_size=SIZE)
    assert again._checked_splits()["val"].ids == splits["val"].ids


def test_missing_folder(tmp_path):
    with pytest.raises(MissingPathError, match=r"train_folder` folder .*nowhere' does not exist"):
        ImageClassificationData.from_folders(tmp_path / "nowhere")


def test_folder_without_class_subfolders_says_so(tmp_path):
    write_image(tmp_path / "flat" / "x.png", np.random.default_rng(0), 1)
    with pytest.raises(ImageDataError, match=r"no class subfolders.*holds 1 image"):
        ImageClassificationData.from_folders(tmp_path / "flat")


def test_class_folder_without_images(tmp_path):
    train = make_folder(tmp_path / "train")
    (train / "empty").mkdir()
    (train / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ImageDataError, match=r"Class folder .*empty' has no images"):
        ImageClassificationData.from_folders(train)


def test_val_folder_with_an_unknown_class(tmp_path):
    train = make_folder(tmp_path / "train")
    val = make_folder(tmp_path / "val", classes=("ants", "wasps"), per_class=1)
    with pytest.raises(ImageDataError, match="classes that the training data lacks: wasps"):
        ImageClassificationData.from_folders(train, val)


def test_single_class_is_rejected(tmp_path):
    with pytest.raises(ImageDataError, match="at least 2 classes"):
        ImageClassificationData.from_folders(make_folder(tmp_path / "train", classes=("only",)))


def test_val_split_and_val_folder_together(tmp_path):
    train = make_folder(tmp_path / "train")
    with pytest.raises(ImageDataError, match="not both"):
        ImageClassificationData.from_folders(train, train, val_split=0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_split": 1.0}, r"val_split.*\[0, 1\)"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"on_bad_image": "ignore"}, "on_bad_image"),
        ({"augment": "yes"}, "augment"),
    ],
)
def test_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(ImageDataError, match=match):
        ImageClassificationData(**kwargs)


def _with_bad_images(tmp_path):
    train = make_folder(tmp_path / "train")
    (train / "ants" / "broken.png").write_bytes(b"\x89PNG not really")
    (train / "bees" / "empty.jpg").write_bytes(b"")
    return train


def test_unreadable_images_are_skipped_with_a_counting_warning(tmp_path):
    data = ImageClassificationData.from_folders(_with_bad_images(tmp_path), image_size=SIZE, batch_size=16)
    with pytest.warns(UserWarning, match=r"Skipped 2 unreadable image\(s\) of 10 in the train data"):
        data.setup("fit")
    images, _ = _batch(data)
    assert len(images) == 8


def test_unreadable_images_raise_on_request(tmp_path):
    data = ImageClassificationData.from_folders(_with_bad_images(tmp_path), on_bad_image="error")
    with pytest.raises(ImageDataError, match=r"2 unreadable image\(s\) of 10.*broken\.png"):
        data.setup("fit")


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "train" / "a" / "gray.png", rng, 0, mode="L")
    write_image(tmp_path / "train" / "b" / "alpha.png", rng, 1, mode="RGBA")
    data = ImageClassificationData.from_folders(tmp_path / "train", image_size=SIZE, augment=False)
    images, _ = _batch(data)
    assert images.shape == (2, 3, SIZE, SIZE)


def test_predict_folder_lists_every_image(tmp_path):
    folder = make_folder(tmp_path / "anything", per_class=2)
    data = ImageClassificationData.from_folders(predict_folder=folder, image_size=SIZE, batch_size=8)
    assert data.num_classes is None
    assert len(data.predict_ids) == 4
    assert _batch(data, "predict").shape == (4, 3, SIZE, SIZE)
    with pytest.raises(ImageDataError, match="No train data"):
        data.train_dataloader()


# -------------------------------------------------------------------------------------------- files
def test_from_files_with_names_and_indices(tmp_path):
    root = make_folder(tmp_path / "imgs")
    files = sorted(root.rglob("*.png"))
    names = [f.parent.name for f in files]
    data = ImageClassificationData.from_files(files, names, val_files=files[:2], val_targets=names[:2])
    assert data.labels == ["ants", "bees"]
    indexed = ImageClassificationData.from_files(files, [0, 1] * 4, labels=["x", "y"])
    assert indexed.labels == ["x", "y"]


@pytest.mark.parametrize(
    ("files", "targets", "kwargs", "error", "match"),
    [
        (2, [0, 1], {}, ImageDataError, "has 2 images but `train_targets` has 1"),
        (2, None, {}, ImageDataError, "`train_targets` is missing"),
        (2, [0, 1.5], {}, ImageDataError, "all class indices .* or all class names"),
        (2, [0, "a"], {}, ImageDataError, "a mix of ints and strings"),
        (2, [0, 3], {"labels": ["a", "b"]}, ImageDataError, r"< 2 \(the number of labels\); got 3"),
        (2, [0, -1], {}, ImageDataError, "got -1"),
        (2, ["a", "z"], {"labels": ["a", "b"]}, ImageDataError, "z are not in `labels`"),
        ("missing", [0, 1], {}, MissingPathError, r"1 file\(s\) in `train_files` do not exist"),
        ("string", [0], {}, ImageDataError, "must be a list of image paths"),
    ],
)
def test_from_files_bad_inputs(tmp_path, files, targets, kwargs, error, match):
    root = make_folder(tmp_path / "imgs", per_class=1)
    paths = sorted(root.rglob("*.png"))
    if files == "missing":
        paths = [paths[0], tmp_path / "gone.png"]
    elif files == "string":
        paths = str(paths[0])
    if targets == [0, 1] and files == 2 and match.startswith("has 2"):
        targets = [0]
    with pytest.raises(error, match=match):
        ImageClassificationData.from_files(paths, targets, **kwargs)


# ------------------------------------------------------------------------------------ arrays/tensors
def test_from_arrays_layouts_and_dtypes():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    data = ImageClassificationData.from_arrays(gray, [0, 1] * 3, image_size=SIZE, augment=False, batch_size=6)
    images, targets = _in_order(data)
    assert images.shape == (6, 3, SIZE, SIZE)
    assert targets.tolist() == [0, 1] * 3
    floats = rng.random((4, 8, 8, 3)).astype(np.float32)
    mixed = [rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), rng.random((5, 7))]
    assert ImageClassificationData.from_arrays(floats, ["x", "y", "x", "y"]).labels == ["x", "y"]
    assert ImageClassificationData.from_arrays(mixed, [0, 1]).num_classes == 2


def test_from_tensors_channels_first():
    images = torch.rand(4, 3, 8, 8)
    data = ImageClassificationData.from_tensors(
        images,
        torch.tensor([0, 1, 0, 1]),
        val_data=images[:2],
        val_targets=torch.tensor([0, 1]),
        predict_data=images,
        image_size=SIZE,
        augment=False,
    )
    batch, targets = _in_order(data)
    assert batch.shape == (4, 3, SIZE, SIZE)
    assert targets.tolist() == [0, 1, 0, 1]
    assert data.predict_ids == ["0", "1", "2", "3"]
    # uint8 and float [0, 1] inputs of the same picture give the same pixels
    as_uint8 = ImageClassificationData.from_tensors(
        (images * 255).round().to(torch.uint8), [0, 1, 0, 1], image_size=SIZE, augment=False
    )
    assert torch.allclose(_in_order(as_uint8)[0], batch, atol=1e-6)


@pytest.mark.parametrize(
    ("maker", "match"),
    [
        (lambda: np.zeros((2, 3, 8, 8), np.uint8), r"shape \(H, W, C\).*got \(3, 8, 8\).*from_tensors"),
        (lambda: np.full((2, 8, 8), 2.0), r"float pixels in \[2, 2\].*\[0, 1\]"),
        (lambda: np.full((2, 8, 8), 300), r"integer pixels in \[300, 300\]"),
        (lambda: np.zeros((2, 8), np.uint8), "3 or 4 dimensions"),
        (lambda: np.zeros((2, 8, 8), bool), "dtype bool"),
        (lambda: [], "is empty"),
        (lambda: "images", "array batch or a list of arrays"),
    ],
)
def test_from_arrays_bad_inputs(maker, match):
    with pytest.raises(ImageDataError, match=match):
        ImageClassificationData.from_arrays(maker(), [0, 1])


def test_from_tensors_rejects_channels_last():
    with pytest.raises(ImageDataError, match=r"\(C, H, W\).*got \(8, 8, 3\).*from_arrays"):
        ImageClassificationData.from_tensors(torch.zeros(2, 8, 8, 3), [0, 1])


# --------------------------------------------------------------------------------------- transforms
def test_default_transforms_follow_the_backbone_name():
    data = ImageClassificationData.from_arrays(np.zeros((2, 8, 8), np.uint8), [0, 1], backbone=BACKBONE)
    assert data.data_config()["input_size"] == (3, 160, 160)
    assert data.data_config()["mean"] == (0.5, 0.5, 0.5)  # test_resnet's, not ImageNet's
    data.image_size = 20
    assert _batch(data)[0].shape[-2:] == (20, 20)


def test_default_transforms_follow_the_model_being_trained(tmp_path):
    model = ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False, image_size=12)
    data = ImageClassificationData.from_folders(make_folder(tmp_path / "train"), batch_size=2)
    seen = []

    class Spy(ImageClassifier):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0].shape)
            return super().training_step(batch, batch_idx)

    spy = Spy(num_classes=2, backbone=BACKBONE, pretrained=False, image_size=12)
    trainer(1, limit_train_batches=1).finetune(spy, data)
    assert seen == [torch.Size([2, 3, 12, 12])]
    assert model.data_config()["input_size"] == (3, 12, 12)


def test_custom_transforms_and_transform_kwargs():
    def to_tensor(image):
        return torch.full((1,), float(np.asarray(image).mean()))

    arrays = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)])
    data = ImageClassificationData.from_arrays(arrays, [0, 1], train_transform=to_tensor, batch_size=2)
    images, _ = _in_order(data)
    assert images.squeeze(1).tolist() == [0.0, 255.0]
    bad = ImageClassificationData.from_arrays(arrays, [0, 1], transform_kwargs={"nonsense": 1})
    with pytest.raises(ImageDataError, match="Bad transform_kwargs"):
        bad.setup("fit")


def test_no_warning_without_bad_images(tmp_path):
    data = ImageClassificationData.from_folders(make_folder(tmp_path / "train"), image_size=SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.setup("fit")
