"""FSDP2 (``ModelParallelStrategy`` + ``fully_shard``) on 2 CPU processes over gloo, real Lightning.

One launch of ``fsdp_scenarios.py`` runs every scenario. Under FSDP2 every rank gathers the same whole
tensors from the shards, so rank identity proves nothing: each scenario is compared with a
single-process run of the same math (the same global batches, in ``DistributedSampler`` order).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import (
    CALLBACKS,
    EPOCHS,
    PHASE_SCHEDULER,
    PLATEAU,
    ScoredData,
    ScoredNet,
    assert_refused,
    load_ranks,
    max_diff,
    reference_run,
    run_script,
)
from fsdp_scenarios import CACHE, LORA, LP_FT, PLATEAU_EPOCHS

from finetune_strategies import CheckpointError
from finetune_strategies.core.resume import check_file

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "fsdp_scenarios.py"
BUILT_INS = CALLBACKS  # every built-in, both *_deepspeed, a subclass, schedules with layer_lr_decay
PEFT = importlib.util.find_spec("peft") is not None
NO_PEFT = "peft is not installed (pip install 'finetune-strategies[peft]'): the lora scenarios did not run"
WITH_LORA = [pytest.param(name, marks=pytest.mark.skipif(not PEFT, reason=NO_PEFT)) for name in LORA]
SINGLE: dict[str, Any] = {
    **{name: name for name in [*BUILT_INS, *(LORA if PEFT else [])]},
    "cache": CACHE,
    "lp_ft": LP_FT,
    "phase_scheduler": PHASE_SCHEDULER,
}
BACKBONE = ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias", "backbone.3.weight"]
HEAD = ["head.bias", "head.weight"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    run_script(str(SCRIPT), str(out), "all", timeout=900)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The same schedules in one process with the global batch, without FSDP."""
    out = tmp_path_factory.mktemp("fsdp_single")
    results = {name: reference_run(out, name, None if spec == name else spec) for name, spec in SINGLE.items()}
    plateau = {"model": ScoredNet, "data": ScoredData, "max_epochs": PLATEAU_EPOCHS, "limit_val_batches": 1.0}
    results["plateau"] = reference_run(out, "plateau", PLATEAU, **plateau)
    return results


def weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters and buffers but the per-rank sample count."""
    return {k: v for k, v in state.items() if k != "seen"}


@pytest.mark.parametrize("scenario", [*BUILT_INS, "cache", "lp_ft", "phase_scheduler", *WITH_LORA])
def test_fsdp2_matches_a_single_process_run_of_the_same_math(
    runs: Path, single: dict[str, dict[str, Any]], scenario: str
) -> None:
    reference = single[scenario]
    for rank, dump in enumerate(load_ranks(runs / scenario)):
        assert len(dump["epochs"]) == EPOCHS
        for epoch in range(EPOCHS):
            diff = max_diff(weights(dump["epochs"][epoch]), weights(reference["epochs"][epoch]))
            assert diff < 1e-5, (scenario, epoch, rank, diff)
        assert dump["requires_grad"] == reference["requires_grad"]
        assert dump["groups"] == reference["groups"]  # the same param groups, names and lrs
        assert dump["final"]["seen"] * 2 == reference["final"]["seen"]  # each rank saw half the samples
    if scenario != "freeze":  # the backbone (or its adapters) really trained
        dump = load_ranks(runs / scenario)[0]
        first = next(k for k in dump["final"] if k.startswith("backbone.0.") and dump["requires_grad"].get(k))
        assert not torch.equal(dump["final"][first], dump["initial"][first]), first


@pytest.mark.parametrize("scenario", [*BUILT_INS, *WITH_LORA])
def test_frozen_parameters_have_no_gradient_and_no_optimizer_state(
    runs: Path, single: dict[str, dict[str, Any]], scenario: str
) -> None:
    """Per epoch, the parameters with a gradient and with optimizer state are those of the single-process
    run, where exactly the trainable ones have them; every gradient is this rank's shard of the whole."""
    reference = single[scenario]
    for dump in load_ranks(runs / scenario):
        for epoch in range(EPOCHS):
            assert sorted(dump["grads"][epoch]) == sorted(reference["grads"][epoch]), epoch
            assert dump["optimizer_state"][epoch] == reference["optimizer_state"][epoch], epoch
            for name, (local, whole) in dump["grads"][epoch].items():
                assert local == -(-whole // 2), name  # reduce-scattered: each rank holds its half


def test_a_frozen_backbone_is_bitwise_unchanged_and_has_nothing_to_step(runs: Path) -> None:
    for dump in load_ranks(runs / "freeze_unfreeze"):
        assert sorted(dump["grads"][0]) == HEAD
        assert dump["optimizer_state"][0] == HEAD
        assert all(torch.equal(dump["initial"][k], dump["epochs"][0][k]) for k in BACKBONE)
        assert not any(torch.equal(dump["epochs"][0][k], dump["epochs"][1][k]) for k in BACKBONE)
    for dump in load_ranks(runs / "freeze"):
        assert all(dump["grads"][epoch].keys() == set(HEAD) for epoch in range(EPOCHS))
        assert all(torch.equal(dump["initial"][k], dump["final"][k]) for k in BACKBONE)


def test_a_model_built_on_the_meta_device_freezes_and_unfreezes_after_materialisation(runs: Path) -> None:
    """``trainer.init_module(empty_init=True)``: the strategy freezes meta parameters, ``fully_shard`` and
    Lightning materialise them, and the flags survive."""
    for dump in load_ranks(runs / "meta_init"):
        assert sorted(dump["grads"][0]) == HEAD
        assert all(torch.equal(dump["initial"][k], dump["epochs"][0][k]) for k in BACKBONE)
        assert sorted(dump["grads"][1]) == sorted([*BACKBONE, "backbone.3.bias", *HEAD])
        assert all(dump["requires_grad"].values())


def test_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(runs: Path) -> None:
    """Stopped after the unfreeze epoch with a distributed checkpoint (a folder of shards), resumed."""
    pairs = [
        ("resume", "freeze_unfreeze"),
        ("resume_deepspeed", "unfreeze_milestones_deepspeed"),
        ("resume_l2_sp", "l2_sp"),
    ]
    for name, uninterrupted in pairs:
        for resumed, full in zip(load_ranks(runs / name), load_ranks(runs / uninterrupted), strict=True):
            assert len(resumed["epochs"]) == 1  # it resumed, it did not restart
            assert max_diff(resumed["final"], full["final"]) == 0.0
            assert resumed["groups"] == full["groups"]
            assert max_diff(_momenta(resumed), _momenta(full)) == 0.0
    assert (runs / "resume_ckpt" / "last.ckpt").is_dir()


@pytest.mark.parametrize("lost", [".metadata", "meta.pt"])
def test_a_sharded_checkpoint_cut_off_while_being_written_is_refused(runs: Path, tmp_path: Path, lost: str) -> None:
    """The folder's index (torch's) and metadata file (Lightning's) are written last."""
    check_file(runs / "resume_ckpt" / "last.ckpt")  # complete
    folder = tmp_path / "last.ckpt"
    shutil.copytree(runs / "resume_ckpt" / "last.ckpt", folder)
    (folder / lost).unlink()
    with pytest.raises(
        CheckpointError,
        match=rf"Sharded checkpoint .*last.ckpt is incomplete: it has 2 shard file\(s\) but no {re.escape(lost)}",
    ):
        check_file(folder)


def test_without_groups_rebuilt_before_the_load_the_backbone_would_silently_stop_training(runs: Path) -> None:
    """The power check: FSDP loads the optimizer state before Lightning's ``BaseFinetuning`` can rebuild the
    unfrozen group, so without our hook the resumed backbone gets gradients but no optimizer group."""
    for resumed, full in zip(
        load_ranks(runs / "resume_late_layout"), load_ranks(runs / "freeze_unfreeze"), strict=True
    ):
        assert resumed["requires_grad"]["backbone.0.weight"]
        assert [name for name, _, _ in resumed["groups"]] == [None]  # no backbone group
        assert max_diff(resumed["final"], full["final"]) > 1e-3


def test_plateau_decision_is_rank_zeros_and_the_best_weights_come_back(
    runs: Path, single: dict[str, dict[str, Any]]
) -> None:
    """Rank 1's scores never plateau, rank 0's do after epoch 1: both unfreeze at epoch 2, after putting
    back the best (epoch 0) weights, and end where the single-process run ends."""
    for dump in load_ranks(runs / "plateau"):
        assert dump["transitions"] == [2]
        assert max_diff(weights(dump["final"]), weights(single["plateau"]["final"])) < 1e-5


def test_plateau_resume_puts_back_the_best_weights_saved_in_the_sharded_checkpoint(runs: Path) -> None:
    for resumed, full in zip(load_ranks(runs / "resume_plateau"), load_ranks(runs / "plateau"), strict=True):
        assert len(resumed["epochs"]) == PLATEAU_EPOCHS - 2
        assert resumed["transitions"] == [2]
        assert max_diff(resumed["final"], full["final"]) == 0.0


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        # configure_model sharded the head only: unfreezing the backbone would train per-rank copies
        ("unsharded_backbone", "Under ModelParallelStrategy, 6 parameter(s) that the schedule trains are not sharded"),
        ("wise_ft", "WiSEFT is not supported under fsdp2 (ModelParallelStrategy): it interpolates"),
        ("drift", "DriftMonitor is not supported under fsdp2 (ModelParallelStrategy): it sums"),
    ],
)
def test_what_fsdp2_cannot_do_fails_before_training_and_says_why(runs: Path, scenario: str, expected: str) -> None:
    assert_refused(runs, scenario, expected)


@pytest.mark.skipif(not PEFT, reason=NO_PEFT)
def test_lora_adapters_are_sharded_with_the_model_and_the_base_stays_frozen(runs: Path) -> None:
    """peft injects the adapters in ``setup``, before ``configure_model`` shards them with the rest."""
    base = ["backbone.0.base_layer.weight", "backbone.3.base_layer.weight"]
    for dump in load_ranks(runs / "lora"):
        adapters = [name for name in dump["requires_grad"] if ".lora_" in name]
        assert adapters
        assert all(dump["requires_grad"][name] for name in adapters)
        assert not any(dump["requires_grad"][name] for name in base)
        assert all(torch.equal(dump["initial"][k], dump["final"][k]) for k in base)
        assert all(set(adapters) <= set(grads) for grads in dump["grads"])
        assert not any(name in grads for grads in dump["grads"] for name in base)


@pytest.mark.skipif(not PEFT, reason=NO_PEFT)
def test_lora_resume_from_a_sharded_trainable_only_checkpoint_equals_the_uninterrupted_run(runs: Path) -> None:
    for resumed, full in zip(load_ranks(runs / "lora_resume"), load_ranks(runs / "lora_unfreeze"), strict=True):
        assert len(resumed["epochs"]) == 1
        assert max_diff(resumed["final"], full["final"]) == 0.0
        assert max_diff(_momenta(resumed), _momenta(full)) == 0.0


def _momenta(dump: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: state["momentum_buffer"] for name, state in dump["optimizer"]["state"].items()}
