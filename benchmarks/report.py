"""Write a run's results as JSON and as Markdown tables."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.cache_bench import CacheSuite
from benchmarks.pairing import PairedComparison
from benchmarks.records import VariantRecord, quiet
from benchmarks.targets import Target, describe, evidence
from benchmarks.variants import Variant

MIB = 2**20
CLOCKS = {"cpu": "process's CPU time", "wall": "wall-clock time"}


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _used(used: int, total: int, quiet_only: bool) -> str:
    return f"{used}/{total}" if quiet_only else f"{total}/{total}, busy"


def _ratio(value: float, direction: str) -> str:
    return f"{value:.3f}x" if direction == "<=" else f"{value:.1f}x"


def target_value(target: Target) -> str:
    if "bytes" in target.name:
        return f"{target.value:,.0f} B"
    if "1e-5" in target.name:
        return f"{target.value:.1e}"
    return _ratio(target.value, target.direction)


def _goal(target: Target) -> str:
    if "bytes" in target.name:
        return "= 0 B"
    if "1e-5" in target.name:
        return "<= 1e-05"
    return f"{target.direction} {target.goal:.2f}x"


def interval_text(low: float | None, high: float | None, direction: str) -> str:
    if low is None or high is None:
        return "-"
    return f"{_ratio(low, direction)}-{_ratio(high, direction)}"


def targets_table(targets: list[Target]) -> list[str]:
    rows = [
        [
            t.name,
            t.measured,
            target_value(t),
            interval_text(t.low, t.high, t.direction),
            _goal(t),
            t.evidence or "exact",
            f"**{t.verdict}**",
        ]
        for t in targets
    ]
    return markdown_table(
        ["target", "measured", "median ratio / value", "95% interval", "goal", "evidence", "verdict"], rows
    )


def paired_table(paired: Sequence[PairedComparison], variants: dict[str, Variant], judged: bool) -> list[str]:
    rows = []
    for comparison in paired:
        c, interval, wall = comparison.comparison, comparison.interval(), comparison.interval("wall")
        used = [pair for pairs, _ in comparison.used() for pair in pairs]
        verdict = comparison.verdict()
        if verdict is not None and not judged:
            verdict = "not judged (smoke size)"
        rows.append(
            [
                describe(comparison, variants),
                f"{1e3 * statistics.median(p.a_s for p in used):.1f}",
                f"{1e3 * statistics.median(p.b_s for p in used):.1f}",
                _ratio(interval.median, c.direction),
                interval_text(interval.low, interval.high, c.direction),
                f"{_ratio(wall.median, c.direction)} ({interval_text(wall.low, wall.high, c.direction)})",
                evidence(comparison),
                "-" if c.goal is None else f"{c.direction} {c.goal:.2f}x",
                "-" if verdict is None else verdict,
            ]
        )
    clock = paired[0].clock if paired else "wall"
    header = [
        "A / B",
        f"A median ({clock} ms)",
        f"B median ({clock} ms)",
        "median ratio",
        "95% interval",
        "wall-clock ratio (95% interval)",
        "pairs",
        "goal",
        "verdict",
    ]
    return markdown_table(header, rows)


def steps_table(records: dict[str, VariantRecord]) -> list[str]:
    rows = []
    for variant in records.values():
        for phase in variant.phases:
            step, period = phase.step, phase.period
            used, quiet_only = quiet(phase.samples, phase.quiet_share)
            floor = records.get(phase.floor) if phase.floor else None
            vs_floor = "-" if floor is None or floor is variant else f"{step.median / floor.phases[0].step.median:.3f}x"
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
        "vs minimal loop (unpaired)",
        "period median (ms)",
        "optimizer state (MiB)",
        "frozen params' state (B)",
        "trainable params",
        "peak memory (MiB, +above start)",
    ]
    return markdown_table(header, rows)


def cache_table(cache: CacheSuite) -> list[str]:
    rows = [
        [
            f"cache_features={cached}",
            f"{cache.median_s(cached, first=True):.3f}",
            f"{cache.median_s(cached, first=False):.3f}",
        ]
        for cached in (False, True)
    ]
    lines = markdown_table(
        ["freeze (train_bn=False, bn_eval=True)", "epoch 0, median over rounds (s)", "later epochs, median (s)"], rows
    )
    interval, stats = cache.paired[0].interval(), cache.stats
    lines += [
        "",
        f"- Speed-up of frozen epochs after the first, paired epoch by epoch: **{interval.median:.1f}x** "
        f"(95% interval {interval.low:.1f}x-{interval.high:.1f}x; {evidence(cache.paired[0])}).",
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
    return markdown_table(["machine", ""], rows)


@dataclass(frozen=True)
class Results:
    """Everything a run writes: its description (``run``: command, config, machine, rounds, ...), the variants
    measured alone, the paired comparisons, the targets and the cache suite."""

    run: dict[str, Any]
    alone: dict[str, VariantRecord]
    paired: Sequence[PairedComparison]
    targets: list[Target]
    cache: CacheSuite | None
    variants: dict[str, Variant]


def markdown(results: Results) -> str:
    result, alone, paired, targets, cache = results.run, results.alone, results.paired, results.targets, results.cache
    config = result["config"]
    rounds = ", ".join(f"{name}: {count}" for name, count in result["rounds"].items())
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{result['command']}` (total {result['total_seconds']:.0f} s"
        + (", **smoke size: the numbers mean nothing and no timing target is judged**" if result["smoke"] else "")
        + ").",
        "",
        f"Workload: timm `{config['model']}` backbone + linear head, {config['image_size']} px (the per-layer-groups "
        f"comparison: `{config['vit_model']}` at {config['vit_image_size']} px), batch {config['batch_size']}, AdamW, "
        f"synthetic data; {config['warmup']} warm-up + {config['steps']} measured steps per phase and round. "
        f"Rounds run: {rounds or 'none'}. Judged by the {CLOCKS[result['clock']]} per step; the lockstep "
        f"threads {'share one malloc arena' if result['single_malloc_arena'] else 'have malloc arenas of their own'}. "
        f"Memory: {result['memory_kind']}, "
        f"reset {'per phase' if result['memory_scope'] == 'phase' else 'never (process-wide peak)'}.",
        "",
        *machine_lines(result["machine"]),
        "",
        "## Targets",
        "",
        "Timing targets are judged on the 95% interval of the median paired ratio: pass when the whole interval "
        "meets the goal, miss when the whole interval misses it, inconclusive when it contains the goal.",
        "",
        *targets_table(targets),
    ]
    if paired:
        lines += [
            "",
            "## Paired comparisons",
            "",
            "A and B train in lockstep, one step each in turn; a pair is step i of A and step i of B of one round. "
            f"Pairs are quiet when other processes used at most {config['quiet_share']:.0%} of the machine's CPU "
            "during both steps; a round with enough quiet pairs contributes only those.",
            "",
            *paired_table(paired, results.variants, judged=not result["smoke"]),
        ]
    if alone:
        lines += [
            "",
            "## Each variant alone",
            "",
            "One fit per variant, by itself: absolute step times, memory and optimizer state. Its ratios to the "
            "minimal loop are unpaired (runs minutes apart) and only indicative; the targets use the paired "
            "comparisons. Step: batch on the device to optimizer step done, fine-tuning callback hooks included. "
            "Period: one batch to the next, adding data loading and the training loop's bookkeeping. Steps used: "
            f"those during which other processes used at most {config['quiet_share']:.0%} of the machine's CPU, or "
            "every step (marked busy) when fewer than 5 were.",
            "",
            *steps_table(alone),
        ]
    if cache is not None:
        lines += ["", "## Frozen-feature cache", "", *cache_table(cache)]
    return "\n".join(lines) + "\n"


def paired_json(comparison: PairedComparison) -> dict[str, Any]:
    """The comparison, its intervals by both clocks, its verdict and every sample, round by round."""
    used = comparison.used()
    return {
        **asdict(comparison.comparison),
        "clock": comparison.clock,
        "interval": asdict(comparison.interval()),
        "wall_interval": asdict(comparison.interval("wall")),
        "verdict": comparison.verdict(),
        "rounds": [
            {"quiet_only": only_quiet, "a": [asdict(x) for x in a], "b": [asdict(x) for x in b]}
            for (a, b), (_, only_quiet) in zip(comparison.rounds, used, strict=True)
        ],
    }


def write(out: Path, results: Results) -> tuple[Path, Path]:
    """Write ``benchmarks.json`` and ``benchmarks.md`` under ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **results.run,
        "variants": [r.to_json() for r in results.alone.values()],
        "paired": [paired_json(p) for p in results.paired],
        "targets": [t.to_json() for t in results.targets],
        "cache": results.cache.to_json() if results.cache is not None else None,
    }
    json_path, md_path = out / "benchmarks.json", out / "benchmarks.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path
