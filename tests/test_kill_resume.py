"""Kill a real training process with SIGKILL after the unfreeze epoch, resume it, lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import subprocess_env

WORKER = Path(__file__).with_name("kill_resume_worker.py")


def launch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # rank 1 joins this process group, so one killpg ends every rank
    )


def kill_when_ready(process: subprocess.Popen[str], ready: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{process.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("the run never reached the kill point")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def assert_bitwise_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def load_last(folder: Path) -> dict[str, Any]:
    """``last.ckpt``: a file, or under FSDP2 a folder of shards whose metadata file holds the rest."""
    path = folder / "last.ckpt"
    return torch.load(path / "meta.pt" if path.is_dir() else path, weights_only=False)


@pytest.mark.parametrize(("mode", "world"), [("single", 1), ("ddp", 2), ("fsdp2", 2)])
def test_sigkill_after_unfreeze_then_resume_last_is_bitwise_identical(tmp_path: Path, mode: str, world: int) -> None:
    kill_when_ready(launch(mode, "killed", str(tmp_path)), tmp_path / "ready")
    assert (tmp_path / "run_ckpt" / "last.ckpt").is_dir() == (mode == "fsdp2")
    last = load_last(tmp_path / "run_ckpt")
    assert last["epoch"] == 1  # the checkpoint left behind is the unfreeze epoch's
    (state,) = [s for s in last["callbacks"].values() if "started_phases" in s]
    assert state["started_phases"] == [0]  # written after the unfreeze

    result = subprocess.run(
        [sys.executable, str(WORKER), mode, "resume", str(tmp_path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for rank in range(world):
        resumed = torch.load(tmp_path / f"resumed.rank{rank}.pt", weights_only=False)
        full = torch.load(tmp_path / f"full.rank{rank}.pt", weights_only=False)
        assert len(resumed["epochs"]) == 2  # it resumed, it did not restart
        assert len(full["epochs"]) == 4
        assert_bitwise_equal(resumed["final"], full["final"], "weights")
        assert_bitwise_equal(resumed["optimizer"], full["optimizer"], "optimizer")
        assert all(resumed["requires_grad"].values())


@pytest.mark.parametrize(("kill_epoch", "checkpointed_epoch"), [(2, 1), (3, 2)])
def test_sigkill_around_a_plateau_transition_then_resume_last_is_bitwise_identical(
    tmp_path: Path, kill_epoch: int, checkpointed_epoch: int
) -> None:
    """The score plateaus after epoch 1, so the backbone unfreezes at the start of epoch 2. Killed in
    epoch 2, the last checkpoint holds the ended stage and its best snapshot, and the resumed run makes
    the transition itself; killed in epoch 3, the checkpoint is after the transition."""
    kill_when_ready(launch("plateau", "killed", str(tmp_path), str(kill_epoch)), tmp_path / "ready")
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

    result = subprocess.run(
        [sys.executable, str(WORKER), "plateau", "resume", str(tmp_path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    resumed = torch.load(tmp_path / "resumed.rank0.pt", weights_only=False)
    full = torch.load(tmp_path / "full.rank0.pt", weights_only=False)
    assert len(resumed["epochs"]) == 4 - checkpointed_epoch
    assert resumed["transitions"] == full["transitions"] == [2]
    assert_bitwise_equal(resumed["final"], full["final"], "weights")
    assert_bitwise_equal(resumed["optimizer"], full["optimizer"], "optimizer")
