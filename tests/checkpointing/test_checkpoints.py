"""Resuming refuses damaged checkpoints and checkpoints of another strategy, naming the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import CheckpointError, ResumeMismatchError
from finetune_strategies.core.resume import check_file


def train(directory: Path, strategy: object = ("freeze_unfreeze", 1), epochs: int = 2, **checkpoint: bool) -> Path:
    """A real 2-epoch run that leaves ``last.ckpt`` in ``directory``; returns its path."""
    callback = ModelCheckpoint(dirpath=directory, save_last=True, **checkpoint)
    trainer = make_trainer(epochs, enable_checkpointing=True, callbacks=[callback])
    trainer.finetune(TinyClassifier(), loader(), strategy=strategy)
    return directory / "last.ckpt"


def resume(directory: Path, strategy: object = ("freeze_unfreeze", 1), ckpt_path: str = "last") -> TinyClassifier:
    callback = ModelCheckpoint(dirpath=directory, save_last=True)
    trainer = make_trainer(3, enable_checkpointing=True, callbacks=[callback])
    model = TinyClassifier()
    trainer.finetune(model, loader(), strategy=strategy, ckpt_path=ckpt_path)
    return model


@pytest.fixture
def last(tmp_path: Path) -> Path:
    return train(tmp_path)


def assert_refused(
    directory: Path, error: type[Exception], *fragments: str, strategy: object = ("freeze_unfreeze", 1)
) -> None:
    untouched = TinyClassifier().state_dict()
    callback = ModelCheckpoint(dirpath=directory, save_last=True)
    trainer = make_trainer(3, enable_checkpointing=True, callbacks=[callback])
    model = TinyClassifier()
    with pytest.raises(error) as info:
        trainer.finetune(model, loader(), strategy=strategy, ckpt_path="last")
    for fragment in fragments:
        assert fragment in str(info.value)
    assert trainer.global_step == 0  # nothing trained: it did not start from scratch either
    for key, value in model.state_dict().items():
        assert torch.equal(value, untouched[key]), key


def test_resume_from_a_sound_checkpoint_works(last: Path) -> None:
    model = resume(last.parent)
    assert all(p.requires_grad for p in model.parameters())


def test_truncated_checkpoint_is_refused_naming_the_file(last: Path) -> None:
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert_refused(last.parent, CheckpointError, str(last), "truncated")


def test_corrupt_checkpoint_is_refused_although_torch_load_accepts_it(last: Path) -> None:
    data = bytearray(last.read_bytes())
    with zipfile.ZipFile(last) as archive:  # flip one bit inside a tensor's bytes
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 8)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    data[offset] ^= 0x40
    last.write_bytes(bytes(data))
    torch.load(last, weights_only=False)  # torch loads the damaged file without a word
    assert_refused(last.parent, CheckpointError, str(last), "CRC")


def test_empty_and_missing_checkpoints_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        check_file(empty)
    assert_refused(tmp_path, CheckpointError, str(empty), "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        check_file(tmp_path / "nowhere.ckpt")


def test_weights_only_checkpoint_cannot_resume(tmp_path: Path) -> None:
    train(tmp_path, save_weights_only=True)
    assert_refused(tmp_path, CheckpointError, "last.ckpt", "save_weights_only")


def test_resume_with_another_strategy_is_refused(last: Path) -> None:
    assert_refused(
        last.parent,
        ResumeMismatchError,
        str(last),
        "FreezeUnfreeze",
        "UnfreezeMilestones",
        strategy=("unfreeze_milestones", ((1, 2), 1)),
    )


def test_resume_with_another_schedule_is_refused(last: Path) -> None:
    assert_refused(
        last.parent,
        ResumeMismatchError,
        "epoch 1: backbone",
        "epoch 2: backbone",
        strategy=("freeze_unfreeze", 2),
    )


def test_resume_a_run_without_strategy_with_a_freezing_strategy_is_refused(tmp_path: Path) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(1, enable_checkpointing=True, callbacks=[callback]).fit(TinyClassifier(), loader())
    assert_refused(tmp_path, ResumeMismatchError, "without a finetune-strategies strategy", strategy="freeze")
    resume(tmp_path, strategy="no_freeze")  # nothing frozen: the optimizer state fits, so it resumes
