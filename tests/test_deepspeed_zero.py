"""``*_deepspeed`` strategies under the real DeepSpeed engine (ZeRO stage 1 and 2, 2 ranks).

Runs on CUDA with Lightning's ``DeepSpeedStrategy`` where there are 2 GPUs, else on DeepSpeed's CPU
accelerator over gloo (see ``deepspeed_cpu.py``). Skipped, with the reason, without deepspeed.
``test_deepspeed.py`` covers a single GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import WORLD, Data, Net, load_ranks, make_callback, make_trainer, run_script

pytest.importorskip("deepspeed", reason="deepspeed is not installed: pip install 'finetune-strategies[deepspeed]'")

SCRIPT = Path(__file__).with_name("deepspeed_scenarios.py")
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


@pytest.mark.parametrize("scenario", ["stage1_freeze_unfreeze", "stage2_milestones"])
def test_real_deepspeed_engine_runs_with_zero(runs: Path, scenario: str) -> None:
    for rank in range(WORLD):
        info = torch.load(runs / f"{scenario}.engine.rank{rank}.pt")
        assert info == {"engine": "DeepSpeedEngine", "optimizer": "DeepSpeedZeroOptimizer"}


def test_freeze_unfreeze_deepspeed_trains_the_backbone_only_after_the_unfreeze(runs: Path) -> None:
    ranks = load_ranks(runs / "stage1_freeze_unfreeze")
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


def test_resume_after_the_unfreeze_matches_the_uninterrupted_run(runs: Path) -> None:
    full, resumed = load_ranks(runs / "resume_full"), load_ranks(runs / "resume_resumed")
    for rank in range(len(full)):
        assert resumed[rank]["requires_grad"]["backbone.0.weight"], "the unfrozen backbone trains again"
        for key, tensor in full[rank]["final"].items():
            assert torch.allclose(tensor, resumed[rank]["final"][key], rtol=0, atol=1e-6), key


def test_l2_sp_is_refused_at_setup_under_deepspeed(tmp_path: Path) -> None:
    run_script(str(SCRIPT), str(tmp_path), "l2_sp_refused", timeout=600)
    outcome = torch.load(tmp_path / "l2_sp_refused.pt")
    assert "partitions gradients across ranks" in outcome["message"]
    assert "Train with DDP" in outcome["message"]
    assert outcome["unchanged"], "nothing trained"
