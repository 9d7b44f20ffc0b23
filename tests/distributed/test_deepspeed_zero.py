"""``*_deepspeed`` strategies under the real DeepSpeed engine (ZeRO stage 1, 2 and 3, 2 ranks).

Runs on CUDA with Lightning's ``DeepSpeedStrategy`` where there are 2 GPUs, else on DeepSpeed's CPU
accelerator over gloo (see ``deepspeed_cpu.py``). Skipped, with the reason, without deepspeed.
``test_deepspeed.py`` covers a single GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import WORLD, Data, Net, assert_refused, load_ranks, make_callback, make_trainer, run_script

pytest.importorskip("deepspeed", reason="deepspeed is not installed: pip install 'finetune-strategies[deepspeed]'")

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "deepspeed_scenarios.py"
SAMPLES = 16
BACKBONE = {"0": "backbone.0.", "1": "backbone.1.", "3": "backbone.3."}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deepspeed")
    run_script(str(SCRIPT), str(out), timeout=900)
    return out


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix)]
    assert keys
    return any(not torch.equal(before[k], after[k]) for k in keys)


def reference(callback: str) -> dict[str, Any]:
    """The same schedule without DeepSpeed, in one process with the global batch."""
    trainer = make_trainer(3)
    model = Net()
    trainer.finetune(model, Data(4 * WORLD, samples=SAMPLES), strategy=make_callback(callback))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("scenario", "optimizer"),
    [
        ("stage1_freeze_unfreeze", "DeepSpeedZeroOptimizer"),
        ("stage2_milestones", "DeepSpeedZeroOptimizer"),
        ("stage3_freeze_unfreeze", "DeepSpeedZeroOptimizer_Stage3"),
        ("stage3_decay", "DeepSpeedZeroOptimizer_Stage3"),
    ],
)
def test_real_deepspeed_engine_runs_with_zero(runs: Path, scenario: str, optimizer: str) -> None:
    """The engine and its ZeRO optimizer; the model's size is counted whole, also where ZeRO-3 partitions it."""
    size = sum(p.numel() for p in Net().parameters())
    for rank in range(WORLD):
        info = torch.load(runs / f"{scenario}.engine.rank{rank}.pt")
        assert info == {"engine": "DeepSpeedEngine", "optimizer": optimizer}
        assert torch.load(runs / f"{scenario}.counted.rank{rank}.pt") == [size] * 3  # TrainableMonitor's count


@pytest.mark.parametrize("scenario", ["stage1_freeze_unfreeze", "stage3_freeze_unfreeze"])
def test_freeze_unfreeze_deepspeed_trains_the_backbone_only_after_the_unfreeze(runs: Path, scenario: str) -> None:
    """Under ZeRO-3 every parameter is partitioned; ``Dump`` gathers them whole to compare."""
    ranks = load_ranks(runs / scenario)
    initial = Net().state_dict()
    for dump in ranks:
        epochs = dump["epochs"]
        assert not changed(initial, epochs[0], "backbone.")  # frozen: masked grads, lr 0
        assert changed(initial, epochs[0], "head.")
        for prefix in BACKBONE.values():
            assert changed(epochs[0], epochs[1], prefix)  # unfrozen at epoch 1: it really trains
            assert changed(epochs[1], epochs[2], prefix)
    for a, b in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    final = {k: v for k, v in ranks[0]["final"].items() if k != "seen"}
    expected = reference("freeze_unfreeze_deepspeed")
    assert max((final[k] - expected[k]).abs().max().item() for k in final) < 1e-5


def test_unfreeze_milestones_deepspeed_follows_its_phases(runs: Path) -> None:
    ranks = load_ranks(runs / "stage2_milestones")
    initial = Net().state_dict()
    for dump in ranks:
        epochs = dump["epochs"]
        assert not changed(initial, epochs[0], "backbone.")
        assert changed(epochs[0], epochs[1], BACKBONE["3"])  # last layer at epoch 1
        assert not changed(epochs[0], epochs[1], BACKBONE["0"])
        assert not changed(epochs[0], epochs[1], BACKBONE["1"])
        for prefix in BACKBONE.values():  # everything at epoch 2
            assert changed(epochs[1], epochs[2], prefix)
    for a, b in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    final = {k: v for k, v in ranks[0]["final"].items() if k != "seen"}
    expected = reference("unfreeze_milestones_deepspeed")
    assert max((final[k] - expected[k]).abs().max().item() for k in final) < 1e-5


def test_layer_lr_decay_groups_under_zero3_match_the_run_without_deepspeed(runs: Path) -> None:
    ranks = load_ranks(runs / "stage3_decay")
    initial = Net().state_dict()
    for dump in ranks:
        assert not changed(initial, dump["epochs"][0], "backbone.")
        for prefix in BACKBONE.values():
            assert changed(dump["epochs"][0], dump["epochs"][1], prefix)
    final = {k: v for k, v in ranks[0]["final"].items() if k != "seen"}
    expected = reference("deepspeed_decay")
    assert max((final[k] - expected[k]).abs().max().item() for k in final) < 1e-5


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_after_the_unfreeze_matches_the_uninterrupted_run(runs: Path, stage: int) -> None:
    full, resumed = load_ranks(runs / f"resume{stage}_full"), load_ranks(runs / f"resume{stage}_resumed")
    for rank in range(len(full)):
        assert len(resumed[rank]["epochs"]) == 1
        assert resumed[rank]["requires_grad"]["backbone.0.weight"], "the unfrozen backbone trains again"
        for key, tensor in full[rank]["final"].items():
            assert torch.allclose(tensor, resumed[rank]["final"][key], rtol=0, atol=1e-6), key


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("stage2_not_preregistered", "FreezeUnfreeze adds optimizer param groups during training, which DeepSpeed"),
        ("stage3_cache", "has cache_features=True, which needs the frozen modules' parameters to require no grad"),
        ("stage3_restore_best", "puts a plateaued stage's best weights back (restore_best=True), but under deepspeed"),
        ("stage1_phase_scheduler", "bring their own LR scheduler or reset the optimizer state, which DeepSpeed's"),
        ("stage2_l2_sp", "FreezeUnfreeze with l2_sp is not supported under deepspeed ZeRO-2 (CPUDeepSpeedStrategy)"),
        (
            "stage2_auto_rgn",
            'FreezeUnfreeze with layer_lr="auto_rgn" is not supported under deepspeed ZeRO-2 (CPUDeepSpeedStrategy)',
        ),
    ],
)
def test_what_deepspeed_cannot_do_fails_before_training_and_says_why(runs: Path, scenario: str, expected: str) -> None:
    assert_refused(runs, scenario, expected)
