"""``--ckpt_path`` in the CLI: a damaged file or one holding other objects is a one-line usage error
(exit status 2), and ``--weights_only false`` loads a trusted full checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PicklePayload
from image_helpers import cli_folders, fit_args

from finetune_strategies.cli.app import main

pytestmark = pytest.mark.usefixtures("in_tmp_path")
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.logger=false"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli_ckpt")
    data = cli_folders(root / "data")
    assert main(fit_args(data, root / "fit", "--strategy", "freeze", epochs=1)) == 0
    (checkpoint,) = (root / "fit").rglob("*.ckpt")
    return data, checkpoint


def validate(data: Path, checkpoint: Path, *extra: str) -> int:
    return main(
        ["validate", f"--ckpt_path={checkpoint}", f"--data.train_folder={data / 'train'}",
         f"--data.val_folder={data / 'val'}", *QUIET, *extra]
    )  # fmt: skip


def test_a_truncated_checkpoint_is_a_one_line_usage_error(
    fitted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, checkpoint = fitted
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(checkpoint.read_bytes()[:1000])
    assert validate(data, cut) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(cut) in err
    assert "truncated" in err


def test_a_checkpoint_with_other_objects_needs_weights_only_false(
    fitted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, checkpoint = fitted
    state = torch.load(checkpoint, weights_only=False)
    marker = tmp_path / "unpickled"
    state["extra"] = PicklePayload(marker)
    full = tmp_path / "full.ckpt"
    torch.save(state, full)
    assert validate(data, full) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "weights_only" in err
    assert not marker.exists()  # nothing from the file ran
    assert validate(data, full, "--weights_only=false") == 0  # a trusted file: the user says so
    assert marker.exists()
