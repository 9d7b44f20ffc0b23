"""``python -m benchmarks.run --out results/``: measure, judge the targets, write JSON and Markdown.

Suites run in one process, one after another: ``speed`` (every variant of
:mod:`benchmarks.variants`), ``cache`` (:mod:`benchmarks.cache_bench`) and ``quality``
(:mod:`benchmarks.transfer_quality`, which writes its own ``transfer_quality.*`` files).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.cache_bench import CacheResult, CacheRun, run_cache_once
from benchmarks.config import SMOKE, BenchConfig
from benchmarks.lightning_runs import fit_timed, quiet_lightning
from benchmarks.machine import describe, load_average
from benchmarks.measure import Instruments
from benchmarks.minimal import run_minimal
from benchmarks.records import PhaseRecord, VariantRecord
from benchmarks.report import write
from benchmarks.targets import evaluate
from benchmarks.transfer_quality import run_quality
from benchmarks.variants import Variant, variants
from benchmarks.workload import make_loader

SUITES = ("speed", "cache", "quality")
"""Suites in the order they run; ``--suites`` picks a subset."""


def _log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_variant(variant: Variant, config: BenchConfig, tools: Instruments) -> VariantRecord:
    """Measure every phase of ``variant`` once (one round)."""
    if variant.mode is not None:
        phases = [run_minimal(variant, config, tools)]
    else:
        assert variant.callback is not None
        phases = [PhaseRecord(p, f, config.quiet_share) for p, f in zip(variant.phases, variant.floors, strict=True)]
        loader = make_loader(config, config.steps_per_epoch)
        fit_timed(config, tools, variant.callback(), phases, loader)
    return VariantRecord(variant.key, variant.label, variant.group, variant.settings, phases)


def run_speed(config: BenchConfig, tools: Instruments, started: float) -> dict[str, VariantRecord]:
    """Every variant, ``config.rounds`` times, alternating the order; timings pooled per phase."""
    all_variants = variants()
    records: dict[str, VariantRecord] = {}
    for round_ in range(config.rounds):
        order = all_variants if round_ % 2 == 0 else all_variants[::-1]
        for variant in order:
            _log(f"round {round_ + 1}/{config.rounds}: {variant.key}", started)
            record = run_variant(variant, config, tools)
            if variant.key in records:
                records[variant.key].merge(record)
            else:
                records[variant.key] = record
    return {v.key: records[v.key] for v in all_variants}  # table order, whatever the run order


def run_cache(config: BenchConfig, tools: Instruments, started: float) -> CacheResult:
    """Uncached and cached runs, ``config.rounds`` times, alternating which goes first."""
    runs = {c: CacheRun(cached=c, quiet_share=config.quiet_share) for c in (False, True)}
    for round_ in range(config.rounds):
        for cached in (False, True) if round_ % 2 == 0 else (True, False):
            _log(f"round {round_ + 1}/{config.rounds}: cache_features={cached}", started)
            run_cache_once(runs[cached], config, tools)
    return CacheResult(uncached=runs[False], cached=runs[True])


def retry_busy(
    config: BenchConfig,
    tools: Instruments,
    started: float,
    records: dict[str, VariantRecord],
    cache: CacheResult | None,
) -> list[str]:
    """Run again what other processes slowed down: each variant with a phase short of quiet steps,
    and each cache setting short of quiet epochs. At most ``config.retries`` passes, and none starts
    after ``config.retry_until_s`` seconds into the run. Returns what was run again."""
    by_key = {v.key: v for v in variants()}
    retried: list[str] = []
    for attempt in range(config.retries):
        busy_variants = [key for key, record in records.items() if not record.quiet_enough]
        busy_cache = [run for run in (cache.uncached, cache.cached) if not run.later()[1]] if cache else []
        if not busy_variants and not busy_cache:
            break
        for key in busy_variants:
            if time.perf_counter() - started > config.retry_until_s:
                return retried
            _log(f"retry {attempt + 1}/{config.retries} (machine was busy): {key}", started)
            records[key].merge(run_variant(by_key[key], config, tools))
            retried.append(key)
        for run in busy_cache:
            if time.perf_counter() - started > config.retry_until_s:
                return retried
            _log(f"retry {attempt + 1}/{config.retries} (machine was busy): cache_features={run.cached}", started)
            run_cache_once(run, config, tools)
            retried.append(f"cache_features={run.cached}")
    return retried


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device.")
    return torch.device(name)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, BenchConfig]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results/)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks the plumbing only")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {', '.join(SUITES)}")
    defaults = BenchConfig()
    for field in fields(BenchConfig):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag,
            type=type(getattr(defaults, field.name)),
            default=None,
            help=f"default {getattr(defaults, field.name)!r} ({getattr(SMOKE, field.name)!r} with --smoke)",
        )
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown or not suites:
        parser.error(f"--suites takes a comma-separated subset of {', '.join(SUITES)}, got {args.suites!r}.")
    args.suites = suites
    overrides = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if getattr(args, f.name) is not None}
    try:
        config = replace(SMOKE if args.smoke else defaults, **overrides)
    except ValueError as error:
        parser.error(str(error))
    return args, config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = parse_args(argv)
    started = time.perf_counter()
    quiet_lightning()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    tools = Instruments.for_device(device)
    machine = describe(device)
    records = run_speed(config, tools, started) if "speed" in args.suites else {}
    cache = run_cache(config, tools, started) if "cache" in args.suites else None
    retried = retry_busy(config, tools, started, records, cache)
    machine["load_average_end"] = load_average()
    targets = evaluate(records, cache)
    result: dict[str, Any] = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.run", *argv]),
        "smoke": args.smoke,
        "suites": args.suites,
        "config": config.as_dict(),
        "machine": machine,
        "memory_kind": tools.memory.kind,
        "memory_scope": tools.memory.scope,
        "cpu_accounting": tools.cpu.available,
        "retried": retried,
        "total_seconds": time.perf_counter() - started,
    }
    json_path, md_path = write(args.out, result, records, targets, cache)
    if "quality" in args.suites:
        run_quality(args.out, args.smoke)
        print(f"wrote {args.out / 'transfer_quality.md'}")
    for target in targets:
        print(f"{target.verdict:>12}  {target.name}: {target.measured} = {target.value:.4g}")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
