"""Write a run's results as JSON and as Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.cache_bench import CacheResult
from benchmarks.records import VariantRecord, quiet
from benchmarks.targets import Target

MIB = 2**20


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _used(used: int, total: int, quiet_only: bool) -> str:
    return f"{used}/{total}" if quiet_only else f"{total}/{total}, busy"


def _target_value(target: Target) -> str:
    if "bytes" in target.name:
        return f"{target.value:,.0f} B"
    if "1e-5" in target.name:
        return f"{target.value:.1e}"
    return f"{target.value:.3f}x" if target.direction == "<=" else f"{target.value:.1f}x"


def _goal(target: Target) -> str:
    if "bytes" in target.name:
        return "= 0 B"
    if "1e-5" in target.name:
        return "<= 1e-05"
    return f"{target.direction} {target.goal:.2f}x"


def targets_table(targets: list[Target]) -> list[str]:
    rows = [
        [
            t.name,
            t.measured,
            _target_value(t),
            _goal(t),
            f"±{100 * t.noise:.1f}%" if t.noise is not None else "-",
            f"**{t.verdict}**",
        ]
        for t in targets
    ]
    return _table(["target", "measured", "value", "goal", "noise (2 s.e.)", "verdict"], rows)


def steps_table(records: dict[str, VariantRecord]) -> list[str]:
    rows = []
    for variant in records.values():
        for phase in variant.phases:
            step, period = phase.step, phase.period
            used, quiet_only = quiet(phase.samples, phase.quiet_share)
            floor = records.get(phase.floor) if phase.floor else None
            vs_floor = "-" if floor is None else f"{step.median / floor.phases[0].step.median:.3f}x"
            optimizer = phase.optimizer
            rows.append(
                [
                    variant.label,
                    variant.settings,
                    phase.phase,
                    f"{step.median:.1f}",
                    f"{step.p10:.1f}-{step.p90:.1f}",
                    _used(len(used), len(phase.samples), quiet_only),
                    vs_floor,
                    f"{period.median:.1f}" if period is not None else "-",
                    _mib(optimizer.total_bytes) if optimizer else "-",
                    f"{optimizer.frozen_bytes:,}" if optimizer else "-",
                    f"{phase.trainable_params:,}",
                    f"{_mib(phase.peak_bytes)} (+{_mib(max(phase.peak_bytes - phase.start_bytes, 0))})",
                ]
            )
    header = [
        "variant",
        "settings",
        "phase",
        "step median (ms)",
        "p10-p90 (ms)",
        "steps used (quiet/all)",
        "vs minimal loop",
        "period median (ms)",
        "optimizer state (MiB)",
        "frozen params' state (B)",
        "trainable params",
        "peak memory (MiB, +above start)",
    ]
    return _table(header, rows)


def cache_table(cache: CacheResult) -> list[str]:
    rows = []
    for run in (cache.uncached, cache.cached):
        first, first_quiet = run.first()
        later, later_quiet = run.later()
        first_count = _used(len(first), len(run.epochs), first_quiet)
        count = _used(len(later), sum(len(r) - 1 for r in run.epochs), later_quiet)
        rows.append(
            [
                "cache_features=True" if run.cached else "cache_features=False",
                f"{run.first_epoch_s:.3f} ({first_count})",
                f"{run.later_epoch_s:.3f} ({count})",
                f"{_mib(run.peak_bytes)} (+{_mib(max(run.peak_bytes - run.start_bytes, 0))})",
            ]
        )
    lines = _table(
        [
            "freeze (train_bn=False, bn_eval=True)",
            "epoch 0 (s)",
            "later epochs, median (s)",
            "peak memory (MiB, +above start)",
        ],
        rows,
    )
    stats = cache.cached.stats
    lines += [
        "",
        f"- Speed-up of frozen epochs after the first: **{cache.speedup:.1f}x**.",
        f"- Head weights, largest difference from the uncached run: **{cache.head_max_abs_diff:.1e}**.",
        f"- Cache: {stats.get('samples', 0)} samples, {stats.get('bytes', 0):,} bytes "
        f"({stats.get('bytes', 0) / MIB:.2f} MiB) of a {stats.get('max_bytes', 0) / MIB:,.0f} MiB bound; "
        f"{stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses, full: {stats.get('full', False)}.",
    ]
    return lines


def machine_lines(machine: dict[str, Any]) -> list[str]:
    memory = machine.get("memory_bytes")
    rows = [
        ["CPU", str(machine["cpu"])],
        ["cores (logical / usable)", f"{machine['logical_cores']} / {machine['usable_cores']}"],
        ["memory", f"{memory / 2**30:.1f} GiB" if memory else "unknown"],
        ["device", machine["device"] + (f" ({machine['gpu']})" if machine.get("gpu") else "")],
        ["torch threads (intra / inter-op)", f"{machine['torch_threads']} / {machine['torch_interop_threads']}"],
        ["load average (1, 5, 15 min) at start", str(machine["load_average_start"])],
        ["load average (1, 5, 15 min) at end", str(machine.get("load_average_end"))],
        [
            "python / torch / lightning / timm",
            f"{machine['python']} / {machine['torch']} / {machine['lightning']} / {machine['timm']}",
        ],
        ["platform", str(machine["platform"])],
        ["commit", str(machine.get("git_commit"))],
    ]
    return _table(["machine", ""], rows)


def markdown(
    result: dict[str, Any], records: dict[str, VariantRecord], targets: list[Target], cache: CacheResult | None
) -> str:
    config = result["config"]
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{result['command']}` (total {result['total_seconds']:.0f} s"
        + (", **smoke size: the numbers mean nothing**" if result["smoke"] else "")
        + ").",
        "",
        f"Workload: timm `{config['model']}` backbone + linear head, {config['image_size']} px, batch "
        f"{config['batch_size']}, AdamW, synthetic data; {config['warmup']} warm-up + {config['steps']} measured "
        f"steps per phase, {config['rounds']} round(s). Memory: {result['memory_kind']}, "
        f"reset {'per phase' if result['memory_scope'] == 'phase' else 'never (process-wide peak)'}.",
        "",
        *machine_lines(result["machine"]),
        "",
        "## Targets",
        "",
        *targets_table(targets),
        "",
        "## Step time per variant and phase",
        "",
        "Step: batch on the device to optimizer step done, fine-tuning callback hooks included. Period: one "
        "batch to the next, adding data loading and the training loop's bookkeeping. Steps used: those during "
        f"which other processes used at most {config['quiet_share']:.0%} of the machine's CPU, or every step "
        "(marked busy) when fewer than 5 were.",
        "",
        *steps_table(records),
    ]
    if cache is not None:
        lines += ["", "## Frozen-feature cache", "", *cache_table(cache)]
    return "\n".join(lines) + "\n"


def write(
    out: Path,
    result: dict[str, Any],
    records: dict[str, VariantRecord],
    targets: list[Target],
    cache: CacheResult | None,
) -> tuple[Path, Path]:
    """Write ``benchmarks.json`` and ``benchmarks.md`` under ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **result,
        "variants": [r.to_json() for r in records.values()],
        "targets": [t.to_json() for t in targets],
        "cache": cache.to_json() if cache is not None else None,
    }
    json_path, md_path = out / "benchmarks.json", out / "benchmarks.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown(result, records, targets, cache))
    return json_path, md_path
