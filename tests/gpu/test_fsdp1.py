"""FSDP1 (``FSDPStrategy(use_orig_params=True)``) on CUDA: the checks ``test_fsdp.py`` makes for FSDP2.

FSDP1 refuses CPU devices and Lightning refuses ``FSDPStrategy`` on CPU, so these run only with CUDA
(``tests/gpu/run_gpu_checks.sh``), on ``min(GPUs, 2)`` ranks; the reference is the same schedule on one
GPU without FSDP, with the global batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="FSDP1 needs CUDA: torch's FSDP and Lightning's FSDPStrategy refuse CPU"
)

from ddp_helpers import ScoredData, ScoredNet, assert_refused, max_diff, reference_run, run_script  # noqa: E402
from fsdp1_scenarios import PLATEAU_EPOCHS, PLATEAU_LAST, SCHEDULED, WORLD  # noqa: E402

SCRIPT = Path(__file__).with_name("fsdp1_scenarios.py")
HEAD = {"head.weight", "head.bias"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp1")
    run_script(str(SCRIPT), str(out), timeout=420)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fsdp1_single")
    gpu = {"accelerator": "gpu", "deterministic": False}
    results = {name: reference_run(out, name, **gpu) for name in SCHEDULED}
    plateau = {"model": ScoredNet, "data": ScoredData, "max_epochs": PLATEAU_EPOCHS, "limit_val_batches": 1.0}
    results["plateau"] = reference_run(out, "plateau", PLATEAU_LAST, **plateau, **gpu)
    return results


def _load(path: Path, rank: int) -> dict[str, Any]:
    return torch.load(path.with_name(f"{path.name}.rank{rank}.pt"), weights_only=False, map_location="cpu")


def ranks(runs: Path, name: str) -> list[dict[str, Any]]:
    return [_load(runs / name, rank) for rank in range(WORLD)]


def weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k != "seen"}


@pytest.mark.parametrize("scenario", [*SCHEDULED, "plateau"])
def test_fsdp1_matches_a_single_gpu_run_of_the_same_math(
    runs: Path, single: dict[str, dict[str, Any]], scenario: str
) -> None:
    reference = single[scenario]
    for dump in ranks(runs, scenario):
        for epoch, state in enumerate(dump["epochs"]):
            assert max_diff(weights(state), weights(reference["epochs"][epoch])) < 1e-5, epoch
        assert dump["requires_grad"] == reference["requires_grad"]
        assert [(name, lr) for name, lr, _ in dump["groups"]] == [(name, lr) for name, lr, _ in reference["groups"]]
        assert dump["transitions"] == reference["transitions"]


@pytest.mark.parametrize("scenario", SCHEDULED)
def test_frozen_parameters_have_no_gradient_and_no_optimizer_state(
    runs: Path, single: dict[str, dict[str, Any]], scenario: str
) -> None:
    """A rank holds a flat shard of each unit, so some parameters have no elements on it: over all ranks,
    the parameters with a gradient and with optimizer state are the trainable ones of the reference run."""
    reference = single[scenario]
    dumps = ranks(runs, scenario)
    for epoch in range(3):
        with_grad = set().union(*(d["grads"][epoch] for d in dumps))
        with_state = set().union(*(d["optimizer_state"][epoch] for d in dumps))
        assert with_grad == set(reference["grads"][epoch]), epoch
        assert with_state == set(reference["optimizer_state"][epoch]), epoch
    assert set().union(*(d["grads"][0] for d in ranks(runs, "freeze_unfreeze"))) == HEAD


def test_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(runs: Path) -> None:
    for name, uninterrupted in (("resume", "freeze_unfreeze"), ("resume_deepspeed", "unfreeze_milestones_deepspeed")):
        for resumed, full in zip(ranks(runs, name), ranks(runs, uninterrupted), strict=True):
            assert len(resumed["epochs"]) == 1
            assert max_diff(resumed["final"], full["final"]) == 0.0
            assert resumed["groups"] == full["groups"]
            momenta = [{k: s["momentum_buffer"] for k, s in d["optimizer"]["state"].items()} for d in (resumed, full)]
            assert max_diff(*momenta) == 0.0
    assert (runs / "resume_ckpt" / "last.ckpt").is_dir()


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("flat_params", "FSDPStrategy(use_orig_params=False) flattens each FSDP unit into one FlatParameter"),
        ("restore_best", "(restore_best=True), but under FSDP1 each rank holds a flat shard"),
        ("l2_sp", "FreezeUnfreeze with l2_sp is not supported under fsdp1 (FSDPStrategy)"),
    ],
)
def test_what_fsdp1_cannot_do_fails_before_training(runs: Path, scenario: str, expected: str) -> None:
    assert_refused(runs, scenario, expected)
