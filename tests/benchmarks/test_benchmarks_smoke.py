"""``python -m benchmarks.run --smoke`` runs end to end and writes well-formed results.

Only the structure and the exact (non-timing) facts are checked here: the speed targets belong to
the benchmark itself, never to the test suite, and a smoke-size run judges none of them. The
statistics that judge them are tested on fixed numbers in ``test_benchmark_stats.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks.measure import CpuMeter, Sample  # noqa: E402
from benchmarks.results import quiet  # noqa: E402
from benchmarks.run import parse_args  # noqa: E402
from benchmarks.transfer_quality import settings  # noqa: E402
from benchmarks.variants import comparisons, variants  # noqa: E402

NOT_JUDGED = "not judged (smoke size)"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("results")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out / 'benchmarks.json'}" in result.stdout
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text(), str(out)


def test_json_describes_the_run_and_the_machine(smoke: tuple[dict, str, str]) -> None:
    data, *_ = smoke
    assert data["smoke"] is True
    assert data["suites"] == ["speed", "cache", "quality"]
    assert set(data["rounds"].values()) == {1}, "--smoke runs one round of every session and of the cache"
    assert data["clock"] == "cpu"
    assert data["single_malloc_arena"] is (platform.libc_ver()[0] == "glibc"), "one arena for the lockstep threads"
    assert data["config"]["model"] == "test_resnet"
    machine = data["machine"]
    for key in ("cpu", "logical_cores", "torch", "lightning", "timm", "torch_threads", "device"):
        assert machine[key], key
    assert machine["torch_threads"] == data["config"]["threads"]
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3


def test_every_variant_and_phase_is_measured_alone(smoke: tuple[dict, str, str]) -> None:
    data, *_ = smoke
    config = data["config"]
    expected = {v.key: list(v.phases) for v in variants() if v.alone}
    assert {v["key"]: [p["phase"] for p in v["phases"]] for v in data["variants"]} == expected
    for variant in data["variants"]:
        for phase in variant["phases"]:
            samples = phase["samples"]
            assert len(samples) == config["steps"]
            assert all(s["step_s"] > 0 and s["cpu_s"] > 0 for s in samples)
            assert sum(s["period_s"] is not None for s in samples) == config["steps"] - 1
            step = phase["step_ms"]
            assert step["n"] == phase["samples_used"] <= len(samples)
            assert phase["step_ms_all_samples"]["n"] == len(samples)
            assert 0 < step["p10"] <= step["median"] <= step["p90"]
            assert phase["peak_memory_bytes"] > 0
            state = phase["optimizer_state"]
            assert set(state) == {"total_bytes", "frozen_bytes", "param_groups", "params", "frozen_params"}


def test_frozen_parameters_hold_no_optimizer_state(smoke: tuple[dict, str, str]) -> None:
    data, *_ = smoke
    by_key = {v["key"]: v for v in data["variants"]}
    head_only = by_key["ours.freeze"]["phases"][0]
    assert head_only["optimizer_state"]["frozen_bytes"] == 0
    assert head_only["trainable_params"] == by_key["minimal.frozen"]["phases"][0]["trainable_params"]
    frozen, unfrozen = by_key["ours.freeze_unfreeze"]["phases"]
    assert frozen["optimizer_state"]["total_bytes"] < unfrozen["optimizer_state"]["total_bytes"]
    assert frozen["optimizer_state"]["param_groups"] + 1 == unfrozen["optimizer_state"]["param_groups"]
    pending = by_key["ours.freeze_unfreeze_deepspeed"]["phases"][0]["optimizer_state"]
    assert pending["frozen_params"] > 0, "pre-registered groups hold the frozen parameters"
    assert pending["frozen_bytes"] == 0, "...but no state for them"


def test_every_comparison_is_paired_in_lockstep(smoke: tuple[dict, str, str]) -> None:
    data, *_ = smoke
    steps = data["config"]["steps"]
    assert sorted((p["a"], p["phase"], p["b"]) for p in data["paired"]) == sorted(
        (c.a, c.phase, c.b) for c in comparisons()
    )
    for paired in data["paired"]:
        assert paired["clock"] == "cpu"
        (round_,) = paired["rounds"]
        assert len(round_["a"]) == len(round_["b"]) == steps
        assert all(s["period_s"] is None for s in round_["a"] + round_["b"]), "no period inside a ring"
        interval = paired["interval"]
        assert interval["rounds"] == 1
        if round_["quiet_only"]:
            assert min(3, steps) <= interval["pairs"] <= steps
        else:
            assert interval["pairs"] == steps
        assert interval["low"] <= interval["median"] <= interval["high"]
        assert paired["wall_interval"]["low"] <= paired["wall_interval"]["high"]
    (calibration,) = [p for p in data["paired"] if p["goal"] is None]
    assert (calibration["a"], calibration["b"]) == ("minimal.frozen.copy", "minimal.frozen")
    assert calibration["verdict"] is None


def test_targets_and_cache(smoke: tuple[dict, str, str]) -> None:
    data, *_ = smoke
    names = {t["name"] for t in data["targets"]}
    assert names == {
        "frozen-phase step <= 1.10x minimal loop",
        "no_freeze <= 1.02x plain Lightning fit",
        "zero optimizer-state bytes for frozen parameters",
        "freeze_unfreeze <= 1.02x BackboneFinetuning (same settings)",
        "per-layer param groups <= 1.03x one group",
        "cache: frozen epochs after the first >= 20x faster",
        "cache: head weights equal uncached within 1e-5",
    }
    frozen = [t for t in data["targets"] if t["name"].startswith("frozen-phase")]
    assert len(frozen) == 9, "every strategy with a frozen phase, the new schedules included"
    timing = [t for t in data["targets"] if t["low"] is not None]
    assert timing
    assert all(t["verdict"] == NOT_JUDGED for t in timing), "a smoke-size run judges no timing target"
    exact = [t for t in data["targets"] if t["low"] is None]
    assert {t["name"] for t in exact} == {
        "zero optimizer-state bytes for frozen parameters",
        "cache: head weights equal uncached within 1e-5",
    }
    assert all(t["verdict"] == "pass" for t in exact)
    cache = data["cache"]
    config = data["config"]
    assert [len(r) for r in cache["epochs"]["cache_features=True"]] == [config["cache_epochs"]]
    assert cache["head_max_abs_diff"] <= 1e-5
    stats = cache["cache_stats"]
    assert stats["samples"] == config["cache_batches"] * config["batch_size"]
    assert stats["hits"] == stats["samples"] * (config["cache_epochs"] - 1), "later epochs come from the cache"
    assert stats["bytes"] > 0
    assert not stats["full"]


def test_markdown_has_the_tables(smoke: tuple[dict, str, str]) -> None:
    data, md, _ = smoke
    for heading in ("## Targets", "## Paired comparisons", "## Each variant alone", "## Frozen-feature cache"):
        assert heading in md
    assert "smoke size: the numbers mean nothing and no timing target is judged" in md
    assert f"| CPU | {data['machine']['cpu']} |" in md
    assert md.count("| minimal PyTorch loop |") == 3
    assert md.count("| **") == len(data["targets"])  # one verdict per target row
    tables: list[list[str]] = []
    previous = ""
    for line in md.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    assert len(tables) == 5
    for table in tables:  # a stray "|" in a cell would shift the columns
        assert len({row.count("|") for row in table}) == 1, table[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suites", "speed,transfer"], "--suites takes a comma-separated subset"),
        (["--image-size", "16"], "image_size must be at least 32"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--clock", "sundial"], "clock must be 'auto', 'cpu' or 'wall'"),
        (["--rounds", "4", "--max-rounds", "2"], "max_rounds must be at least rounds"),
        (["--vit-image-size", "40"], "vit_image_size must be a multiple of 16"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_smoke_flag_and_overrides() -> None:
    _, config = parse_args(["--smoke", "--steps", "5"])
    assert (config.model, config.steps, config.image_size) == ("test_resnet", 5, 32)
    _, full = parse_args([])
    assert (full.model, full.image_size, full.batch_size, full.threads) == ("resnet18", 96, 32, 1)
    assert (full.vit_model, full.vit_image_size, full.rounds, full.max_rounds) == ("vit_tiny_patch16_224", 64, 4, 32)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="CPU accounting reads /proc")
def test_cpu_meter_sees_this_process_work() -> None:
    meter = CpuMeter()
    start = meter.read()
    while meter.read().own - start.own < 5:  # busy until 5 clock ticks of this process's own CPU time
        sum(range(10_000))
    end = meter.read()
    share = meter.others_share(start, end)
    assert meter.available
    assert share is not None
    assert 0.0 <= share < 1.5  # a share of the machine (tick granularity can push it past 1)


def test_quiet_samples_are_used_only_when_there_are_enough() -> None:
    calm, loaded = [Sample(0.1, 0.02)] * 5, [Sample(0.5, 0.5)] * 5
    assert quiet(calm + loaded, 0.1) == (calm, True)
    assert quiet(calm[:4] + loaded, 0.1) == (calm[:4] + loaded, False), "too few quiet: all, flagged"
    assert quiet([Sample(0.1)] * 3, 0.1) == ([Sample(0.1)] * 3, True), "no CPU accounting: all count as quiet"


def test_transfer_quality_files(smoke: tuple[dict, str, str]) -> None:
    out = Path(smoke[2])
    payload = json.loads((out / "transfer_quality.json").read_text())
    names = [row["strategy"] for row in payload["rows"]]
    assert names == settings(smoke=True).row_names()
    for row in payload["rows"]:
        assert row["seeds"] == [0, 1]
        assert 0.0 <= row["test_acc"]["mean"] <= 1.0
        assert row["test_acc"]["std"] >= 0.0
    table = (out / "transfer_quality.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| recipe")]
    assert len(rows) == len(names)
    assert (out / "transfer_quality.png").stat().st_size > 10_000
