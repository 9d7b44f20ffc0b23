"""``python -m benchmarks.lora_bench --smoke`` runs end to end; only exact, non-timing facts are checked here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ddp_helpers import run_script

pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")


def test_lora_bench_smoke(tmp_path: Path) -> None:
    run_script("-m", "benchmarks.lora_bench", "--smoke", "--out", str(tmp_path), timeout=600)
    data = json.loads((tmp_path / "lora_bench.json").read_text())
    variants = data["variants"]
    assert list(variants) == ["full", "lora", "lora_attention", "lora_full_ckpt"]
    full, lora, attention, full_ckpt = variants.values()
    # ViT-S blocks (width 384, MLP 1536), r=8: qkv 8*(384+1152), proj 8*(384+384), fc1 and fc2 8*(384+1536) each
    per_block = 8 * (384 + 1152) + 8 * (384 + 384) + 2 * 8 * (384 + 1536)
    head = 384 * 10 + 10
    assert lora["trainable_params"] == 2 * per_block + head
    assert attention["trainable_params"] == 2 * (8 * (384 + 1152) + 8 * (384 + 384)) + head
    assert full["trainable_params"] == full["params"]
    for variant in variants.values():  # AdamW: two float32 moments per trainable parameter, and a step count
        assert 8 * variant["trainable_params"] <= variant["optimizer_bytes"] <= 8 * variant["trainable_params"] + 4096
        assert len(variant["step_s"]) == 2  # 3 steps, 1 warmup
    assert lora["checkpoint_bytes"] < full_ckpt["checkpoint_bytes"] / 5
    names = [t["name"] for t in data["targets"]]
    assert names == [
        "lora: optimizer state",
        "lora: checkpoint",
        "lora_attention: optimizer state",
        "lora_attention: checkpoint",
    ]
    table = (tmp_path / "lora_bench.md").read_text()
    assert f"| lora | {2 * per_block + head:,} (" in table
    assert "| lora: optimizer state | lora / full bytes |" in table
