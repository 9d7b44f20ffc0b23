"""``python -m benchmarks.compile_bench --smoke`` runs end to end (aot_eager at smoke size, see the module).

Only the structure and the exact facts are checked: every phase of both models has paired steps, and the run
of 20 phase changes stayed compiled with at most one graph per change. The step-time ratios and compile
times belong to the benchmark's own report (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks.compile_bench import BACKBONES, CHANGES, PHASES, SMOKE_COMPILER  # noqa: E402
from benchmarks.results import Target  # noqa: E402


def test_compile_bench_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "benchmarks.compile_bench", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "compile_bench.json").read_text())
    assert payload["compile_kwargs"] == SMOKE_COMPILER
    for backbone in BACKBONES:
        phases = payload["speed"][backbone]["phases"]
        assert list(phases) == list(PHASES)
        for result in phases.values():
            assert result["pairs"] == payload["config"]["steps"] * payload["config"]["rounds"]
            assert math.isfinite(result["ratio"])
            assert result["low"] <= result["ratio"] <= result["high"]
    twenty = payload["twenty"]
    assert twenty["phase_changes"] == CHANGES
    assert twenty["stayed_compiled"] is True
    assert twenty["at_most_one_per_change"] is True
    assert twenty["fallbacks"] == []
    assert len(twenty["first_steps_s"]) == CHANGES + 1
    assert "stayed compiled to the end: **True**" in (tmp_path / "compile_bench.md").read_text()
    verdicts = {t["name"]: Target(**t).verdict for t in payload["targets"]}
    assert verdicts["compile: graphs per phase change <= 1 per compiled region"] == "pass"
    assert verdicts["compile: 20 phase changes, no fall back to eager"] == "pass"
    assert verdicts["compile: cnn frozen step compiled / eager <= 1.0"] == "not judged (smoke size)"
