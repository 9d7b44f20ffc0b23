"""The strategy examples run end to end, as subprocesses, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
    assert "param groups after training: 4" in out


def test_feature_cache_example() -> None:
    out = run_example("feature_cache.py", "--epochs", "2")
    assert "head weights, largest difference:" in out
    assert "cache: CacheStats(samples=256" in out
