"""The strategy examples run end to end, as subprocesses, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_strategies_timeline() -> None:
    out = run_example("strategies_timeline.py", "--epochs", "3")
    assert "| `('freeze_unfreeze', 2)` | 5% (1g) | 5% (1g) | 96% (2g) |" in out


@pytest.mark.parametrize("name", ["register_strategy.py"])
def test_register_strategy(name: str) -> None:
    out = run_example(name)
    assert "param groups after training: 3" in out
    assert "group 1 (norms): 4 tensors" in out


def test_feature_cache_example() -> None:
    out = run_example("feature_cache.py", "--epochs", "2")
    assert "head weights, largest difference:" in out
    assert "cache: CacheStats(samples=256" in out


def test_vit_layer_decay_example() -> None:
    out = run_example("vit_layer_decay.py", "--epochs", "1")
    assert "lr-AdamW/backbone.stem" in out
    assert "lr-AdamW/backbone.blocks.5 + backbone.norm" in out
    assert "backbone.stem                        1.78e-04" in out  # 1e-3 * 0.75 ** 6: six blocks above it
    assert "backbone.blocks.0                    2.37e-04" in out


def test_gradual_unfreezing_example() -> None:
    out = run_example("gradual_unfreezing.py", "--epochs", "3")
    assert "epoch 0:" in out
    epoch_1 = next(line for line in out.splitlines() if line.strip().startswith("epoch 1:"))
    head, top = (float(part.split()[-1]) for part in epoch_1.split(";")[1].split(","))
    assert "backbone.layer4" in epoch_1  # the top block unfreezes first
    assert top == pytest.approx(head / 10, rel=0.02)
    assert "validation accuracy" in out


def test_plateau_phases_example() -> None:
    out = run_example("plateau_phases.py", "--epochs", "7")
    assert "until val_acc plateaus (patience 2, at most 6 epochs)" in out
    transitions = out.split("transitions:")[1]
    assert "phase 0 (backbone) starts" in transitions
