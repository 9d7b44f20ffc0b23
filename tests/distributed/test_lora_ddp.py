"""``lora`` under DDP: 2 CPU processes over gloo, real Lightning DDP (see ``ddp_scenarios.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import (
    EPOCHS,
    GLOBAL_BATCH,
    LORA_SPECS,
    Data,
    Dump,
    Net,
    finish,
    launch,
    load_ranks,
    make_callback,
    make_trainer,
    run_script,
)
from test_ddp import cross_rank_diffs, max_diff, optimizer_diff

pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "ddp_scenarios.py"
BASE = ("backbone.0.base_layer.weight", "backbone.3.base_layer.weight")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora_ddp")
    run_script(str(SCRIPT), str(out), *LORA_SPECS, "lora_resume", timeout=600)
    return out


def single(name: str, tmp_path: Path) -> dict[str, Any]:
    """The same schedule in one process with the global batch."""
    make_trainer(callbacks=[Dump(tmp_path / name)]).finetune(Net(), Data(GLOBAL_BATCH), strategy=make_callback(name))
    return torch.load(tmp_path / f"{name}.rank0.pt", weights_only=False)


@pytest.mark.parametrize("scenario", [*LORA_SPECS])
def test_ranks_are_identical_after_every_epoch_and_match_one_process(runs: Path, tmp_path: Path, scenario: str) -> None:
    ranks = load_ranks(runs / scenario)
    assert cross_rank_diffs(ranks) == [0.0] * EPOCHS
    assert optimizer_diff(ranks) == 0.0
    reference = single(scenario, tmp_path)
    drop = {"seen"}
    final = {k: v for k, v in ranks[0]["final"].items() if k not in drop}
    assert max_diff(final, {k: v for k, v in reference["final"].items() if k not in drop}) < 1e-5
    adapters = [k for k in final if ".lora_" in k or ".modules_to_save." in k]
    assert adapters
    for key in adapters:  # the adapters really train, on every rank alike
        assert not torch.equal(ranks[0]["epochs"][0][key], ranks[0]["epochs"][-1][key]), key


def test_adapter_phase_keeps_the_base_bitwise_unchanged_on_every_rank(runs: Path) -> None:
    initial = load_ranks(runs / "lora_unfreeze")[0]["epochs"][0]
    for rank in load_ranks(runs / "lora"):
        for epoch in rank["epochs"]:
            for key in BASE:
                assert torch.equal(epoch[key], initial[key]), key
        assert not any(rank["requires_grad"][k] for k in BASE)


@pytest.mark.parametrize("scenario", ["lora_unfreeze", "lora_dora_unfreeze", "lora_deepspeed_unfreeze"])
def test_lora_then_everything_switches_on_every_rank(runs: Path, scenario: str) -> None:
    """Epoch 0: adapters (and backbone.1, modules_to_save) train, the base does not; from epoch 1 all do."""
    lora = load_ranks(runs / "lora")[0]["epochs"][0]
    for rank in load_ranks(runs / scenario):
        first, second, third = rank["epochs"]
        for key in BASE:
            assert torch.equal(first[key], lora[key]), key  # the adapter phase is the same run as lora's
            assert not torch.equal(second[key], first[key]), key
            assert not torch.equal(third[key], second[key]), key
        assert all(rank["requires_grad"].values())
    saved = load_ranks(runs / "lora_unfreeze")[0]["epochs"][0]["backbone.1.weight"]
    assert not torch.equal(saved, Net().state_dict()["backbone.1.weight"])  # in place, from epoch 0


def test_peft_modules_to_save_original_stays_frozen_so_ddp_never_waits_for_it(runs: Path) -> None:
    """peft #951: the original that peft's wrapper keeps is unused by forward; after the unfreeze it must
    stay frozen or DDP fails the step. Its trained copy changes, the original never does."""
    initial = Net().state_dict()
    for rank in load_ranks(runs / "lora_peft_saved_copy"):
        for epoch in rank["epochs"]:
            assert torch.equal(epoch["backbone.0.original_module.weight"], initial["backbone.0.weight"])
        assert not torch.equal(rank["final"]["backbone.0.modules_to_save.default.weight"], initial["backbone.0.weight"])
        assert not rank["requires_grad"]["backbone.0.original_module.weight"]
        assert rank["requires_grad"]["backbone.3.base_layer.weight"]


def test_the_same_run_without_that_guard_fails_under_ddp(tmp_path: Path) -> None:
    """The power check: thawing the unused originals too makes DDP's reduction fail."""
    result = finish(launch(str(SCRIPT), str(tmp_path), "lora_unguarded"), timeout=600)
    assert result.returncode != 0
    assert "not used in producing the loss" in result.stderr


def test_resume_from_a_trainable_only_checkpoint_in_the_adapter_phase_is_bitwise_equal(runs: Path) -> None:
    checkpoint = torch.load(runs / "lora_resume_ckpt" / "last.ckpt", weights_only=True)
    assert not any(key in checkpoint["state_dict"] for key in BASE)  # the base was left out
    resumed, straight = load_ranks(runs / "lora_resume"), load_ranks(runs / "lora_unfreeze")
    assert cross_rank_diffs(resumed) == [0.0] * (EPOCHS - 1)
    for rank in range(len(resumed)):
        for key, tensor in straight[rank]["final"].items():  # the buffer "seen" too: buffers are kept
            assert torch.equal(tensor, resumed[rank]["final"][key]), key
