"""Soak: many phase changes in one fit leak no memory, DDP wrapper, hook or step time.

CI runs the short form; ``pytest -m soak --soak-full`` runs the full one (200 phase changes in one
process, 40 under 2-rank DDP over gloo). Each run is ``soak_worker.py`` in its own process, so that
its resident memory is its own; the figures are printed (``pytest -s``) and in any failure message.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from ddp_helpers import run_script
from soak_worker import SETTLE

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "soak_worker.py"
MIB = 1 << 20
CHANGES = {"single": (30, 200), "ddp": (8, 40)}  # (short, full)


def growth_per_change(epochs: list[dict[str, Any]]) -> float:
    """Resident memory added per phase change after warm-up, in bytes (least-squares slope)."""
    warm = epochs[max(3, len(epochs) // 5) :]
    xs = [e["epoch"] for e in warm]
    ys = [e["rss"] for e in warm]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["single", "ddp"])
def test_many_phase_changes_leak_nothing(tmp_path: Path, request: pytest.FixtureRequest, mode: str) -> None:
    changes = CHANGES[mode][1 if request.config.getoption("--soak-full") else 0]
    world = 2 if mode == "ddp" else 1
    run_script(str(WORKER), str(tmp_path), mode, str(changes), timeout=900)
    ranks = [json.loads((tmp_path / f"{mode}.rank{r}.json").read_text()) for r in range(world)]

    for rank, result in enumerate(ranks):
        epochs = result["epochs"]
        assert len(epochs) == changes + 1 + SETTLE
        # every change added one param group, and the scheduler learned each
        assert [e["groups"] for e in epochs] == [*range(1, changes + 2), *[changes + 1] * SETTLE]
        assert all(e["scheduler_groups"] == [e["groups"]] for e in epochs)
        assert epochs[-1]["trainable"] == result["fresh"][-1]["trainable"]  # everything trains at the end
        # no old DDP wrapper (with its reducer and hooks) survives a change
        assert all(e["wrappers_alive"] == 1 for e in epochs), [e["wrappers_alive"] for e in epochs]
        if mode == "ddp":
            assert epochs[-1]["wrappers_seen"] == changes + 1  # each change re-wrapped the model
        assert len({e["hooks"] for e in epochs}) == 1, [e["hooks"] for e in epochs]

        growth = growth_per_change(epochs)
        first = statistics.median(e["step_median"] for e in epochs[1:6])
        last = statistics.median(e["step_median"] for e in epochs[-SETTLE:])
        fresh = statistics.median(e["step_median"] for e in result["fresh"][1:])
        # the first epochs of a fit are slow (warm-up); the fresh fit is SETTLE + 1 epochs
        figures = (
            f"{mode} rank {rank}, {changes} changes: RSS {epochs[0]['rss'] / MIB:.1f} -> {epochs[-1]['rss'] / MIB:.1f} "
            f"MiB, {growth / 1024:.1f} KiB per change after warm-up; step time after the first changes "
            f"{first * 1e3:.2f} ms, after the last {last * 1e3:.2f} ms, a fresh fit with everything trainable "
            f"{fresh * 1e3:.2f} ms"
        )
        print(figures)
        assert growth < MIB, figures
        # loose: a soak is not a timed test, and the CI machine is shared
        assert last < 3 * fresh + 0.01, figures

    assert len({r["weights_sha256"] for r in ranks}) == 1  # ranks identical at the end
