"""What a run found: each variant's records per phase, the targets judged on them, and the run's
``benchmarks.json`` and ``benchmarks.md``."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.measure import OptimizerState, Sample, Summary, quiet_or_all
from benchmarks.stats import Direction, PairedComparison, Verdict, judge
from benchmarks.variants import Variant

if TYPE_CHECKING:
    from benchmarks.cache_bench import CacheSuite

MIB = 2**20
CLOCKS = {"cpu": "process's CPU time", "wall": "wall-clock time"}
MIN_QUIET = 5
"""Fewest quiet samples that a summary is built from; with fewer, every sample is used."""


def quiet(samples: Sequence[Sample], threshold: float, minimum: int = MIN_QUIET) -> tuple[list[Sample], bool]:
    """The samples during which other processes used at most ``threshold`` of the CPU, and True; or all
    samples and False when fewer than ``minimum`` are quiet (a busy machine)."""
    return quiet_or_all(samples, lambda sample: sample.quiet(threshold), minimum)


@dataclass
class PhaseRecord:
    """One phase of one variant: its samples (after warm-up) and its state at the phase's end."""

    phase: str
    floor: str | None  # key of the minimal-loop variant doing the same math, if any
    quiet_share: float  # a sample is quiet when other processes used at most this share of the CPU
    samples: list[Sample] = field(default_factory=list)
    optimizer: OptimizerState | None = None
    trainable_params: int = 0
    peak_bytes: int = 0
    start_bytes: int = 0

    @property
    def step(self) -> Summary:
        """The summary of the samples used (see :func:`quiet`)."""
        return Summary.of_seconds([s.step_s for s in quiet(self.samples, self.quiet_share)[0]])

    @property
    def period(self) -> Summary | None:
        periods = [s.period_s for s in quiet(self.samples, self.quiet_share)[0] if s.period_s is not None]
        return Summary.of_seconds(periods) if periods else None

    def to_json(self) -> dict[str, Any]:
        period = self.period
        used, filtered = quiet(self.samples, self.quiet_share)
        return {
            "phase": self.phase,
            "floor": self.floor,
            "step_ms": asdict(self.step),
            "step_ms_all_samples": asdict(Summary.of_seconds([s.step_s for s in self.samples])),
            "period_ms": asdict(period) if period is not None else None,
            "samples_used": len(used),
            "quiet_only": filtered,
            "samples": [asdict(s) for s in self.samples],
            "optimizer_state": asdict(self.optimizer) if self.optimizer is not None else None,
            "trainable_params": self.trainable_params,
            "peak_memory_bytes": self.peak_bytes,
            "memory_at_start_bytes": self.start_bytes,
        }


@dataclass
class VariantRecord:
    """A variant (a strategy, a baseline or the minimal loop) and its phases in order."""

    key: str
    label: str
    group: str
    settings: str
    phases: list[PhaseRecord]

    def phase(self, name: str) -> PhaseRecord:
        for record in self.phases:
            if record.phase == name:
                return record
        raise KeyError(f"{self.key} has no phase {name!r}; it has {[p.phase for p in self.phases]}.")

    def to_json(self) -> dict[str, Any]:
        phases = [p.to_json() for p in self.phases]
        return {"key": self.key, "label": self.label, "group": self.group, "settings": self.settings, "phases": phases}


@dataclass(frozen=True)
class Target:
    """One target row: ``value`` compared with ``goal``. A timing target has the interval ``[low, high]`` of
    a paired comparison and is judged on it; an exact one is judged on ``value``. A timing target of a
    smoke-size run is not judged (``judged=False``): its numbers mean nothing."""

    name: str
    measured: str
    value: float
    goal: float
    direction: Direction
    low: float | None = None
    high: float | None = None
    evidence: str = ""
    judged: bool = True

    @property
    def verdict(self) -> Verdict:
        if not self.judged:
            return "not judged (smoke size)"
        low = self.value if self.low is None else self.low
        high = self.value if self.high is None else self.high
        return judge(low, high, self.goal, self.direction)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        """The target :meth:`to_json` wrote (its verdict is judged again from the numbers)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def describe(paired: PairedComparison, variants: dict[str, Variant]) -> str:
    """``label (settings) phase / label (settings) phase`` of a comparison's two sides."""
    c = paired.comparison

    def side(key: str, phase: str) -> str:
        variant = variants.get(key)
        if variant is None or variant.group != "ours":  # a baseline's settings are those of the other side
            return f"{variant.label if variant else key} ({phase})"
        return f"{variant.label} ({variant.settings}) {phase}"

    return f"{side(c.a, c.phase)} / {side(c.b, c.b_phase)}"


def evidence(paired: PairedComparison) -> str:
    """How many pairs the interval rests on: ``40 of 48 pairs quiet, 4 rounds``."""
    used = paired.used()
    quiet_pairs = sum(len(pairs) for pairs, only_quiet in used if only_quiet)
    return f"{quiet_pairs} of {sum(len(a) for a, _ in paired.rounds)} pairs quiet, {len(used)} rounds"


def paired_target(paired: PairedComparison, variants: dict[str, Variant], judged: bool) -> Target:
    c, interval = paired.comparison, paired.interval()
    assert c.goal is not None, "a comparison without a goal is not a target"
    measured, proof = describe(paired, variants), evidence(paired)
    return Target(c.target, measured, interval.median, c.goal, c.direction, interval.low, interval.high, proof, judged)


def evaluate(
    alone: dict[str, VariantRecord],
    paired: Sequence[PairedComparison],
    cache: CacheSuite | None,
    variants: dict[str, Variant],
    judged: bool,
) -> list[Target]:
    """Every target the run allows to judge; timing targets only when ``judged`` (not at smoke size)."""
    targets = [paired_target(p, variants, judged) for p in paired if p.comparison.goal is not None]
    for variant in (r for r in alone.values() if r.group == "ours"):
        frozen_bytes = max(p.optimizer.frozen_bytes if p.optimizer else 0 for p in variant.phases)
        measured = f"{variant.label} ({variant.settings}), largest over phases"
        targets.append(Target("zero optimizer-state bytes for frozen parameters", measured, frozen_bytes, 0, "<="))
    return targets + (cache.targets(variants, judged) if cache is not None else [])


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def mib(n: int) -> str:
    return f"{n / MIB:,.1f}"


def ratio_text(value: float, direction: str) -> str:
    return f"{value:.3f}x" if direction == "<=" else f"{value:.1f}x"


def interval_text(low: float | None, high: float | None, direction: str) -> str:
    if low is None or high is None:
        return "-"
    return f"{ratio_text(low, direction)}-{ratio_text(high, direction)}"


def target_texts(target: Target) -> tuple[str, str]:
    """The value and the goal of ``target`` as the tables print them."""
    if "bytes" in target.name:
        return f"{target.value:,.0f} B", "= 0 B"
    if "1e-5" in target.name:
        return f"{target.value:.1e}", "<= 1e-05"
    if target.name.startswith("compile:") and target.low is None:  # counts (benchmarks/compile_bench.py)
        return f"{target.value:g}", f"{target.direction} {target.goal:g}"
    return ratio_text(target.value, target.direction), f"{target.direction} {target.goal:.2f}x"


def targets_table(targets: list[Target]) -> list[str]:
    rows = []
    for t in targets:
        value, goal = target_texts(t)
        interval = interval_text(t.low, t.high, t.direction)
        rows.append([t.name, t.measured, value, interval, goal, t.evidence or "exact", f"**{t.verdict}**"])
    header = ["target", "measured", "median ratio / value", "95% interval", "goal", "evidence", "verdict"]
    return markdown_table(header, rows)


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
                ratio_text(interval.median, c.direction),
                interval_text(interval.low, interval.high, c.direction),
                f"{ratio_text(wall.median, c.direction)} ({interval_text(wall.low, wall.high, c.direction)})",
                evidence(comparison),
                "-" if c.goal is None else f"{c.direction} {c.goal:.2f}x",
                "-" if verdict is None else verdict,
            ]
        )
    clock = paired[0].clock if paired else "wall"
    header = ["A / B", f"A median ({clock} ms)", f"B median ({clock} ms)", "median ratio", "95% interval"]
    header += ["wall-clock ratio (95% interval)", "pairs", "goal", "verdict"]
    return markdown_table(header, rows)


def steps_table(records: dict[str, VariantRecord]) -> list[str]:
    rows = []
    for variant in records.values():
        for phase in variant.phases:
            step, period, optimizer = phase.step, phase.period, phase.optimizer
            used, quiet_only = quiet(phase.samples, phase.quiet_share)
            total = len(phase.samples)
            floor = records.get(phase.floor) if phase.floor else None
            vs_floor = "-" if floor is None or floor is variant else f"{step.median / floor.phases[0].step.median:.3f}x"
            rows.append(
                [
                    variant.label,
                    variant.settings,
                    phase.phase,
                    f"{step.median:.1f}",
                    f"{step.p10:.1f}-{step.p90:.1f}",
                    f"{len(used)}/{total}" if quiet_only else f"{total}/{total}, busy",
                    vs_floor,
                    f"{period.median:.1f}" if period is not None else "-",
                    mib(optimizer.total_bytes) if optimizer else "-",
                    f"{optimizer.frozen_bytes:,}" if optimizer else "-",
                    f"{phase.trainable_params:,}",
                    f"{mib(phase.peak_bytes)} (+{mib(max(phase.peak_bytes - phase.start_bytes, 0))})",
                ]
            )
    header = ["variant", "settings", "phase", "step median (ms)", "p10-p90 (ms)", "steps used (quiet/all)"]
    header += ["vs minimal loop (unpaired)", "period median (ms)", "optimizer state (MiB)", "frozen params' state (B)"]
    header += ["trainable params", "peak memory (MiB, +above start)"]
    return markdown_table(header, rows)


def machine_table(machine: dict[str, Any]) -> list[str]:
    memory = machine.get("memory_bytes")
    versions = f"{machine['python']} / {machine['torch']} / {machine['lightning']} / {machine['timm']}"
    rows = [
        ["CPU", str(machine["cpu"])],
        ["cores (logical / usable)", f"{machine['logical_cores']} / {machine['usable_cores']}"],
        ["memory", f"{memory / 2**30:.1f} GiB" if memory else "unknown"],
        ["device", machine["device"] + (f" ({machine['gpu']})" if machine.get("gpu") else "")],
        ["torch threads (intra / inter-op)", f"{machine['torch_threads']} / {machine['torch_interop_threads']}"],
        ["load average (1, 5, 15 min) at start", str(machine["load_average_start"])],
        ["load average (1, 5, 15 min) at end", str(machine.get("load_average_end"))],
        ["python / torch / lightning / timm", versions],
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

    def markdown(self) -> str:
        run, config = self.run, self.run["config"]
        rounds = ", ".join(f"{name}: {count}" for name, count in run["rounds"].items())
        smoke = ", **smoke size: the numbers mean nothing and no timing target is judged**" if run["smoke"] else ""
        arenas = "share one malloc arena" if run["single_malloc_arena"] else "have malloc arenas of their own"
        reset = "per phase" if run["memory_scope"] == "phase" else "never (process-wide peak)"
        quiet_share = f"{config['quiet_share']:.0%}"
        lines = [
            "# Benchmark results",
            "",
            f"Command: `{run['command']}` (total {run['total_seconds']:.0f} s{smoke}).",
            "",
            f"Workload: timm `{config['model']}` backbone + linear head, {config['image_size']} px (the "
            f"per-layer-groups comparison: `{config['vit_model']}` at {config['vit_image_size']} px), batch "
            f"{config['batch_size']}, AdamW, synthetic data; {config['warmup']} warm-up + {config['steps']} measured "
            f"steps per phase and round. Rounds run: {rounds or 'none'}. Judged by the {CLOCKS[run['clock']]} per "
            f"step; the lockstep threads {arenas}. Memory: {run['memory_kind']}, reset {reset}.",
            "",
            *machine_table(run["machine"]),
            "",
            "## Targets",
            "",
            "Timing targets are judged on the 95% interval of the median paired ratio: pass when the whole interval "
            "meets the goal, miss when the whole interval misses it, inconclusive when it contains the goal.",
            "",
            *targets_table(self.targets),
        ]
        if self.paired:
            lines += [
                "",
                "## Paired comparisons",
                "",
                "A and B train in lockstep, one step each in turn; a pair is step i of A and step i of B of one "
                f"round. Pairs are quiet when other processes used at most {quiet_share} of the machine's CPU "
                "during both steps; a round with enough quiet pairs contributes only those.",
                "",
                *paired_table(self.paired, self.variants, judged=not run["smoke"]),
            ]
        if self.alone:
            lines += [
                "",
                "## Each variant alone",
                "",
                "One fit per variant, by itself: absolute step times, memory and optimizer state. Its ratios to the "
                "minimal loop are unpaired (runs minutes apart) and only indicative; the targets use the paired "
                "comparisons. Step: batch on the device to optimizer step done, fine-tuning callback hooks "
                "included. Period: one batch to the next, adding data loading and the training loop's "
                f"bookkeeping. Steps used: those during which other processes used at most {quiet_share} of the "
                "machine's CPU, or every step (marked busy) when fewer than 5 were.",
                "",
                *steps_table(self.alone),
            ]
        if self.cache is not None:
            lines += ["", "## Frozen-feature cache", "", *self.cache.markdown()]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``benchmarks.json`` and ``benchmarks.md`` under ``out``; return their paths."""
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            **self.run,
            "variants": [r.to_json() for r in self.alone.values()],
            "paired": [paired_json(p) for p in self.paired],
            "targets": [t.to_json() for t in self.targets],
            "cache": self.cache.to_json() if self.cache is not None else None,
        }
        json_path, md_path = out / "benchmarks.json", out / "benchmarks.md"
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


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
