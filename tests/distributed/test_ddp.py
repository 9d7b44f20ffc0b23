"""DDP-correct unfreezing: 2 CPU processes over gloo, real Lightning DDP.

One launch of ``ddp_scenarios.py`` runs every scenario; the tests read what each rank dumped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import (
    CALLBACKS,
    EPOCHS,
    Net,
    finish,
    group_members,
    launch,
    load_ranks,
    max_diff,
    reference_run,
    run_script,
)

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "ddp_scenarios.py"
OURS = [*CALLBACKS, "find_unused", "accumulate"]
CALLBACK_OF = {"find_unused": "freeze_unfreeze", "accumulate": "freeze_unfreeze"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    run_script(str(SCRIPT), str(out), "all", timeout=600)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Single-process runs with the global batch, one per callback."""
    out = tmp_path_factory.mktemp("single")
    return {name: reference_run(out, name) for name in ["anchor", *sorted({CALLBACK_OF.get(s, s) for s in OURS})]}


def cross_rank_diffs(ranks: list[dict[str, Any]]) -> list[float]:
    first, second = ranks
    assert len(first["epochs"]) == len(second["epochs"])
    return [max_diff(a, b) for a, b in zip(first["epochs"], second["epochs"], strict=True)]


def optimizer_diff(ranks: list[dict[str, Any]]) -> float:
    states = [r["optimizer"]["state"] for r in ranks]
    assert states[0].keys() == states[1].keys()
    return max(
        (states[0][i]["momentum_buffer"] - states[1][i]["momentum_buffer"]).abs().max().item() for i in states[0]
    )


@pytest.mark.parametrize("scenario", OURS)
def test_every_parameter_and_buffer_identical_on_all_ranks_after_each_epoch(runs: Path, scenario: str) -> None:
    ranks = load_ranks(runs / scenario)
    assert len(ranks[0]["epochs"]) == EPOCHS
    assert cross_rank_diffs(ranks) == [0.0] * EPOCHS
    assert optimizer_diff(ranks) == 0.0
    assert "seen" in ranks[0]["final"]  # buffers are compared too


@pytest.mark.parametrize("scenario", OURS)
def test_final_weights_match_single_process_with_the_same_global_batch(
    runs: Path, single: dict[str, dict[str, Any]], scenario: str
) -> None:
    ranks = load_ranks(runs / scenario)
    reference = single[CALLBACK_OF.get(scenario, scenario)]
    final = {k: v for k, v in ranks[0]["final"].items() if k != "seen"}
    assert max_diff(final, {k: v for k, v in reference["final"].items() if k != "seen"}) < 1e-5
    assert ranks[0]["final"]["seen"] * 2 == reference["final"]["seen"]  # each rank saw half the samples
    if scenario != "freeze":  # the backbone really trained: everything ends trainable
        assert all(ranks[0]["requires_grad"].values())
        initial = Net().state_dict()
        assert not torch.equal(ranks[0]["final"]["backbone.0.weight"], initial["backbone.0.weight"])


def test_plain_lightning_base_finetuning_diverges_under_the_same_setup(
    runs: Path, single: dict[str, dict[str, Any]]
) -> None:
    """The power check: the same assertions fail for Lightning's own callback (issue #20340)."""
    ranks = load_ranks(runs / "anchor")
    diffs = cross_rank_diffs(ranks)
    assert diffs[0] == 0.0  # frozen epoch: only the head trains, and DDP registered it
    assert min(diffs[1:]) > 1e-3, diffs  # after the unfreeze the backbone drifts per rank
    assert max_diff(ranks[0]["final"], single["anchor"]["final"]) > 1e-3
    frozen_epoch_head = {k: v for k, v in ranks[0]["epochs"][0].items() if k.startswith("head")}
    ours_epoch_head = {
        k: v for k, v in load_ranks(runs / "freeze_unfreeze")[0]["epochs"][0].items() if k.startswith("head")
    }
    assert max_diff(frozen_epoch_head, ours_epoch_head) == 0.0  # same run until the unfreeze


def test_resume_after_unfreeze_resyncs_ddp(runs: Path) -> None:
    """On resume DDP wraps the model before the unfreezes are replayed in ``on_fit_start``."""
    resumed = load_ranks(runs / "resume")
    assert len(resumed[0]["epochs"]) == 1  # only the last epoch ran after the resume
    assert cross_rank_diffs(resumed) == [0.0]
    assert optimizer_diff(resumed) == 0.0
    uninterrupted = load_ranks(runs / "freeze_unfreeze")
    assert max_diff(resumed[0]["final"], uninterrupted[0]["final"]) == 0.0


def test_resume_without_the_resync_would_diverge(runs: Path) -> None:
    """The power check for the resume path: the same resume with our DDP sync switched off."""
    unsynced = load_ranks(runs / "resume_unsynced")
    assert cross_rank_diffs(unsynced)[0] > 1e-4


def test_a_plateau_decision_is_rank_zeros_and_every_rank_takes_it(runs: Path) -> None:
    """Rank 1's own scores never plateau; rank 0's do after epoch 1. Both unfreeze at epoch 2, and stay equal."""
    ranks = load_ranks(runs / "plateau")
    assert [r["transitions"] for r in ranks] == [[2], [2]]
    assert cross_rank_diffs(ranks) == [0.0] * 4
    assert optimizer_diff(ranks) == 0.0
    assert all(ranks[0]["requires_grad"].values())
    frozen, unfrozen = ranks[0]["epochs"][1], ranks[0]["epochs"][2]
    assert not torch.equal(frozen["backbone.0.weight"], unfrozen["backbone.0.weight"])


HUNG_RANKS = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # rank 1"])
time.sleep(600)  # rank 0
"""


def test_a_hung_launch_fails_with_every_ranks_stack() -> None:
    """A hang reads as a failure with a cause: each process's Python stack, and none left running."""
    process = launch("-c", HUNG_RANKS)
    with pytest.raises(pytest.fail.Exception) as failure:
        finish(process, timeout=20)
    message = str(failure.value)
    assert "did not finish in 20 s" in message
    assert message.count("Fatal Python error: Aborted") == 2  # both processes printed their stack
    assert 'File "<string>", line 1 in <module>' in message  # rank 1, in its sleep
    assert 'File "<string>", line 4 in <module>' in message  # rank 0, in its sleep
    assert group_members(process.pid) == []  # no process of the launch is left running
