"""Kill a real training process with SIGKILL after the unfreeze epoch, or while it writes a checkpoint;
resume it, lose nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import NEEDS_FSDP2, assert_bitwise_equal, kill_when_ready, launch, run_script

from finetune_strategies.core.resume import check_file
from finetune_strategies.errors import CheckpointError
from finetune_strategies.transfer.record import STATE_FILE, Progress, StageResult

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "kill_resume_worker.py"


def load_last(folder: Path) -> dict[str, Any]:
    """``last.ckpt``: a file, or under FSDP2 a folder of shards whose metadata file holds the rest."""
    path = folder / "last.ckpt"
    return torch.load(path / "meta.pt" if path.is_dir() else path, weights_only=False)


@pytest.mark.parametrize(("mode", "world"), [("single", 1), ("ddp", 2), pytest.param("fsdp2", 2, marks=NEEDS_FSDP2)])
def test_sigkill_after_unfreeze_then_resume_last_is_bitwise_identical(tmp_path: Path, mode: str, world: int) -> None:
    kill_when_ready(launch(str(WORKER), mode, "killed", str(tmp_path), merge_output=True), tmp_path / "ready")
    assert (tmp_path / "run_ckpt" / "last.ckpt").is_dir() == (mode == "fsdp2")
    last = load_last(tmp_path / "run_ckpt")
    assert last["epoch"] == 1  # the checkpoint left behind is the unfreeze epoch's
    (state,) = [s for s in last["callbacks"].values() if "started_phases" in s]
    assert state["started_phases"] == [0]  # written after the unfreeze

    resume_and_compare(tmp_path, mode, world)


def resume_and_compare(tmp_path: Path, mode: str, world: int) -> None:
    """Resume the killed run from ``last.ckpt``; it must end bitwise equal to a run never killed."""
    run_script(str(WORKER), mode, "resume", str(tmp_path), timeout=600)
    for rank in range(world):
        resumed = torch.load(tmp_path / f"resumed.rank{rank}.pt", weights_only=False)
        full = torch.load(tmp_path / f"full.rank{rank}.pt", weights_only=False)
        assert len(resumed["epochs"]) == 2  # it resumed, it did not restart
        assert len(full["epochs"]) == 4
        assert_bitwise_equal(resumed["final"], full["final"], "weights")
        assert_bitwise_equal(resumed["optimizer"], full["optimizer"], "optimizer")
        assert all(resumed["requires_grad"].values())


def test_sigkill_while_writing_last_ckpt_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    kill_when_ready(
        launch(str(WORKER), "single", "killed_in_write", str(tmp_path), "safe", merge_output=True), tmp_path / "ready"
    )
    folder = tmp_path / "run_ckpt"
    partial = folder / ".last.ckpt.partial"
    assert partial.stat().st_size == 1 << 20  # killed in the middle of the write ...
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        check_file(partial)  # ... which never finished
    check_file(folder / "last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 1  # the previous checkpoint, whole
    resume_and_compare(tmp_path, "single", 1)


def test_the_kill_lands_mid_write_an_in_place_write_loses_last_ckpt(tmp_path: Path) -> None:
    """The power check: the same kill against an IO that writes straight into the file destroys it."""
    kill_when_ready(
        launch(str(WORKER), "single", "killed_in_write", str(tmp_path), "in_place", merge_output=True),
        tmp_path / "ready",
    )
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        check_file(tmp_path / "run_ckpt" / "last.ckpt")


# Records stage `index` of a transfer run in the folder argv[1], but stops after the new record is
# written to the partial file, before the rename, and waits to be killed.
RECORD_STAGE_AND_STALL = """
import os, sys, time
from pathlib import Path
from finetune_strategies.transfer.record import Progress, StageResult
folder = Path(sys.argv[1])
def stall(fd):
    (folder / "ready").write_text("ready")
    time.sleep(600)
os.fsync = stall
index = len(Progress(folder).records)
Progress(folder).add(StageResult(index, f"stage{index}", (), 1, 0, str(folder / "final.ckpt"), "fp"))
"""


def record_stage(folder: Path) -> None:
    index = len(Progress(folder).records)
    Progress(folder).add(StageResult(index, f"stage{index}", (), 1, 0, str(folder / "final.ckpt"), "fp"))


def test_sigkill_while_recording_a_stage_keeps_the_previous_record(tmp_path: Path) -> None:
    (tmp_path / "final.ckpt").write_bytes(b"")
    record_stage(tmp_path)
    kill_when_ready(launch("-c", RECORD_STAGE_AND_STALL, str(tmp_path), merge_output=True), tmp_path / "ready")
    partial = tmp_path / f".{STATE_FILE}.partial"
    assert [r["name"] for r in json.loads(partial.read_text())["stages"]] == ["stage0", "stage1"]  # not renamed
    assert [r.name for r in Progress(tmp_path).records] == ["stage0"]  # the record as it was
    record_stage(tmp_path)
    assert [r.name for r in Progress(tmp_path).records] == ["stage0", "stage1"]
    assert not partial.exists()


@pytest.mark.parametrize(("kill_epoch", "checkpointed_epoch"), [(2, 1), (3, 2)])
def test_sigkill_around_a_plateau_transition_then_resume_last_is_bitwise_identical(
    tmp_path: Path, kill_epoch: int, checkpointed_epoch: int
) -> None:
    """The score plateaus after epoch 1, so the backbone unfreezes at the start of epoch 2. Killed in
    epoch 2, the last checkpoint holds the ended stage and its best snapshot, and the resumed run makes
    the transition itself; killed in epoch 3, the checkpoint is after the transition."""
    process = launch(str(WORKER), "plateau", "killed", str(tmp_path), str(kill_epoch), merge_output=True)
    kill_when_ready(process, tmp_path / "ready")
    last = load_last(tmp_path / "run_ckpt")
    assert last["epoch"] == checkpointed_epoch
    (state,) = [s for s in last["callbacks"].values() if "started_phases" in s]
    if checkpointed_epoch == 1:
        assert state["started_phases"] == []
        assert state["stage"]["ended"] == "plateau"
        assert state["stage"]["snapshot"]
    else:
        assert state["started_phases"] == [0]
        assert [t["epoch"] for t in state["transitions"]] == [2]

    run_script(str(WORKER), "plateau", "resume", str(tmp_path), timeout=600)
    resumed = torch.load(tmp_path / "resumed.rank0.pt", weights_only=False)
    full = torch.load(tmp_path / "full.rank0.pt", weights_only=False)
    assert len(resumed["epochs"]) == 4 - checkpointed_epoch
    assert resumed["transitions"] == full["transitions"] == [2]
    assert_bitwise_equal(resumed["final"], full["final"], "weights")
    assert_bitwise_equal(resumed["optimizer"], full["optimizer"], "optimizer")
