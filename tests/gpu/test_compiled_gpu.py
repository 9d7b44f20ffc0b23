"""Compiled models on a GPU: the compile benchmark's targets with CUDA graphs off and on (skipped without CUDA).

Runs ``benchmarks.compile_bench`` at full size on ``cuda`` twice, with ``torch.compile``'s defaults (inductor,
CUDA graphs off) and with ``mode="reduce-overhead"`` (CUDA graphs on), writing both reports under
``$COMPILE_GPU_OUT`` (default: pytest's tmp folder) and printing them. Asserted: the 20 phase changes stay
compiled with at most one graph per change, and every phase has paired steps. The ratios are printed, not
asserted: they are the benchmark's to judge (see docs/compiled.md).

    COMPILE_GPU_OUT=results/gpu python -m pytest -q -s tests/gpu/test_compiled_gpu.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CUDA_GRAPHS = {"off": {}, "on": {"mode": "reduce-overhead"}}

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("cuda_graphs", sorted(CUDA_GRAPHS))
def test_compiled_phase_changes_on_the_gpu(cuda_graphs: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("COMPILE_GPU_OUT", tmp_path)) / f"cuda_graphs_{cuda_graphs}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    kwargs = json.dumps(CUDA_GRAPHS[cuda_graphs])
    command = [sys.executable, "-m", "benchmarks.compile_bench", "--device", "cuda", "--compile-kwargs", kwargs]
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nCUDA graphs {cuda_graphs}:\n{(out / 'compile_bench.md').read_text()}")
    payload = json.loads((out / "compile_bench.json").read_text())
    for result in payload["speed"].values():
        assert all(math.isfinite(phase["ratio"]) for phase in result["phases"].values())
    twenty = payload["twenty"]
    assert twenty["stayed_compiled"] is True
    assert twenty["at_most_one_per_change"] is True
