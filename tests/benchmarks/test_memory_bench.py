"""``python -m benchmarks.memory_bench --smoke`` runs DDP and FSDP2 side by side and reports per-rank memory.

Only the exact figures (bytes of parameters, gradients and optimizer states, counted from the tensors)
are checked; resident-memory peaks are the benchmark's to report, never the test suite's to judge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from ddp_helpers import run_script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks.memory_bench import ENGINES, FIGURES, PHASES, SMOKE  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("memory")
    result = run_script("-m", "benchmarks.memory_bench", "--smoke", "--out", str(out), "--timeout", "500", timeout=1100)
    assert "| phase | per rank (MiB) | DDP | FSDP2 | FSDP2 / DDP |" in result.stdout
    return json.loads((out / "memory.json").read_text()), (out / "memory.md").read_text()


def figure(data: dict[str, Any], engine: str, phase: str, name: str) -> list[int]:
    return [rank["phases"][phase][name] for rank in data["results"][engine]]


def test_every_engine_phase_and_figure_is_reported_for_every_rank(report: tuple[dict[str, Any], str]) -> None:
    data, text = report
    assert data["smoke"] is True
    assert data["size"] == SMOKE
    for engine in ENGINES:
        assert [rank["rank"] for rank in data["results"][engine]] == [0, 1]
        for phase in PHASES:
            for name in FIGURES:
                assert all(value > 0 for value in figure(data, engine, phase, name)), (engine, phase, name)
    assert text.count("\n| frozen |") == text.count("\n| unfrozen |") == len(FIGURES)


def test_fsdp2_holds_half_of_what_ddp_holds(report: tuple[dict[str, Any], str]) -> None:
    """Exact tensor bytes: FSDP2 shards parameters, gradients and optimizer states over the 2 ranks."""
    data, _ = report
    width, depth = SMOKE["width"], SMOKE["depth"]
    backbone, head = 4 * depth * (width + 1) * width, 4 * (width + 1) * 10
    tensors = 2 * depth + 2  # AdamW's scalar step per parameter tensor, on every rank
    expected = {
        ("frozen", "param_bytes"): backbone + head,
        ("frozen", "grad_bytes"): head,  # the frozen backbone gets no gradient
        ("frozen", "optimizer_state_bytes"): 2 * head,  # and no optimizer state
        ("unfrozen", "param_bytes"): backbone + head,
        ("unfrozen", "grad_bytes"): backbone + head,
        ("unfrozen", "optimizer_state_bytes"): 2 * (backbone + head),
    }
    for (phase, name), ddp in expected.items():
        steps = 4 * (2 if phase == "frozen" else tensors) if name == "optimizer_state_bytes" else 0
        assert figure(data, "ddp", phase, name) == [ddp + steps] * 2, (phase, name)
        assert figure(data, "fsdp2", phase, name) == [ddp // 2 + steps] * 2, (phase, name)
