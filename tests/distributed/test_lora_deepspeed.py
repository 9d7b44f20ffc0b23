"""``lora_deepspeed`` under the real DeepSpeed engine (ZeRO stage 2, 2 ranks; CPU harness without GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ddp_helpers import WORLD, Net, load_ranks, run_script
from test_deepspeed_zero import reference

pytest.importorskip("deepspeed", reason="deepspeed is not installed: pip install 'finetune-strategies[deepspeed]'")
pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "deepspeed_scenarios.py"
BASE = ("backbone.0.base_layer.weight", "backbone.3.base_layer.weight", "backbone.1.weight")
ADAPTERS = ("backbone.0.lora_B.default.weight", "backbone.3.lora_B.default.weight", "backbone.0.lora_A.default.weight")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("lora_deepspeed")
    run_script(str(SCRIPT), str(out), "stage2_lora", timeout=900)
    for rank in range(WORLD):
        info = torch.load(out / f"stage2_lora.engine.rank{rank}.pt")
        assert info == {"engine": "DeepSpeedEngine", "optimizer": "DeepSpeedZeroOptimizer"}
    return load_ranks(out / "stage2_lora")


def test_adapters_train_and_the_base_stays_bitwise_unchanged_until_the_unfreeze(ranks: list[dict]) -> None:
    expected = reference("lora_deepspeed_unfreeze")
    initial = Net().state_dict()
    for rank in ranks:
        first, second, third = rank["epochs"]
        for key in BASE:  # masked gradients and lr 0 until the unfreeze: not a bit changes
            assert torch.equal(first[key], initial[key.replace(".base_layer", "")]), key
        for key in ADAPTERS:
            assert not torch.equal(first[key], third[key]), key
        for key in BASE[:2]:  # the pre-registered base group starts at epoch 1
            assert not torch.equal(first[key], second[key]), key
            assert not torch.equal(second[key], third[key]), key
        final = {k: v for k, v in rank["final"].items() if k != "seen"}
        assert max((final[k] - expected[k]).abs().max().item() for k in final) < 1e-5
    for a, b in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
