"""No pickle runs without consent: a real malicious file at every entry point that reads a checkpoint.

Each test plants a file whose unpickling would create a marker file (``conftest.PicklePayload``),
checks that loading it fails with an error naming the file, what it holds and how to allow it, and
that the marker was never created; then it opts in and sees the payload run (the file really is
malicious, so the first half of the test could fail). The weight-file loader has its own test in
``test_weights.py``; feature caches never go to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PicklePayload, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from transfer_tools import BASE_TRAINER, TinyData, TinyRegressor, one_thread  # noqa: F401

from finetune_strategies.checkpointing.checkpoint_io import SafeCheckpointIO
from finetune_strategies.errors import CheckpointError, StageError
from finetune_strategies.transfer import run_transfer_learning


def plant(path: Path, marker: Path) -> None:
    """Rewrite the checkpoint at ``path`` with a payload that creates ``marker`` when unpickled."""
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["payload"] = PicklePayload(marker)
    torch.save(checkpoint, path)


def assert_refused(error: pytest.ExceptionInfo[Exception], path: Path, marker: Path, opt_in: str) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "getattr" in message  # what it holds: PicklePayload pickles as getattr(Path, "touch")
    assert "would run code" in message
    assert opt_in in message
    assert not marker.exists()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A real resumable checkpoint of one epoch of fine-tuning."""
    trainer = make_trainer(1, enable_checkpointing=True, callbacks=[ModelCheckpoint(tmp_path / "ckpt", save_last=True)])
    trainer.finetune(TinyClassifier(), loader(), strategy=("freeze_unfreeze", 1))
    return tmp_path / "ckpt" / "last.ckpt"


def test_our_trainer_reads_and_writes_through_the_safe_checkpoint_io() -> None:
    assert type(make_trainer(1).strategy.checkpoint_io) is SafeCheckpointIO
    chosen = TorchCheckpointIO()
    assert make_trainer(1, plugins=[chosen]).strategy.checkpoint_io is chosen  # the user's choice is kept


def test_ckpt_path_does_not_unpickle_without_weights_only_false(tmp_path: Path, checkpoint: Path) -> None:
    marker = tmp_path / "pwned"
    plant(checkpoint, marker)
    with pytest.raises(CheckpointError) as error:
        make_trainer(2).finetune(TinyClassifier(), loader(), strategy=("freeze_unfreeze", 1), ckpt_path=checkpoint)
    assert_refused(error, checkpoint, marker, "weights_only=False")

    # opting in runs the payload, and the run resumes from the checkpoint
    trainer = make_trainer(2)
    trainer.finetune(
        TinyClassifier(), loader(), strategy=("freeze_unfreeze", 1), ckpt_path=checkpoint, weights_only=False
    )
    assert marker.exists()
    assert trainer.current_epoch == 2
    # the opt-in was for that call only
    marker.unlink()
    with pytest.raises(CheckpointError):
        trainer.fit(TinyClassifier(), loader(), ckpt_path=checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize("method", ["validate", "test", "predict"])
def test_evaluation_with_ckpt_path_does_not_unpickle(tmp_path: Path, checkpoint: Path, method: str) -> None:
    marker = tmp_path / "pwned"
    plant(checkpoint, marker)
    model: Any = TinyClassifier()
    model.test_step = model.validation_step
    with pytest.raises(CheckpointError) as error:
        getattr(make_trainer(1), method)(model, loader(), ckpt_path=checkpoint)
    assert_refused(error, checkpoint, marker, "weights_only=False")


def test_a_planted_stage_checkpoint_does_not_unpickle(tmp_path: Path) -> None:
    config: dict[str, Any] = {"trainer": {**BASE_TRAINER, "max_epochs": 1}, "stages": [{}, {}]}
    first = run_transfer_learning(config, TinyRegressor(), TinyData(), output_dir=tmp_path)
    stage = Path(first.stages[-1].checkpoint)  # the one a rerun loads
    marker = tmp_path / "pwned"
    plant(stage, marker)  # someone with write access to the output folder
    with pytest.raises(StageError) as error:
        run_transfer_learning(config, TinyRegressor(), TinyData(), output_dir=tmp_path)
    assert_refused(error, stage, marker, "weights_only: false")

    result = run_transfer_learning({**config, "weights_only": False}, TinyRegressor(), TinyData(), output_dir=tmp_path)
    assert marker.exists()
    assert all(s.reused for s in result.stages)


# ---------------------------------------------------------------------------------- writes
def test_a_planted_link_at_the_partial_path_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".fixed.ckpt.partial").symlink_to(outside)
    trainer = make_trainer(1, enable_checkpointing=True, callbacks=[ModelCheckpoint(folder, filename="fixed")])
    trainer.finetune(TinyClassifier(), loader(), strategy="freeze")
    assert outside.read_text() == "not yours"  # the link's target is untouched
    written = folder / "fixed.ckpt"
    assert not written.is_symlink()
    assert "state_dict" in torch.load(written, weights_only=True)
    assert not (folder / ".fixed.ckpt.partial").exists()
