"""``python -m benchmarks.run --out results/``: measure, judge the targets, write JSON and Markdown.

Suites run in one process: ``speed`` (every variant of :mod:`benchmarks.variants` once alone, then the
paired comparisons in lockstep sessions, :mod:`benchmarks.lockstep`), ``cache`` (:mod:`benchmarks.cache_bench`,
its rounds interleaved with the sessions') and ``quality`` (:mod:`benchmarks.transfer_quality`, which writes its
own ``transfer_quality.*`` files).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.cache_bench import CacheSuite
from benchmarks.config import SMOKE, BenchConfig
from benchmarks.lockstep import speed_suites
from benchmarks.measure import Clock, Instruments, describe_machine, load_average, single_malloc_arena
from benchmarks.results import Results, evaluate
from benchmarks.stats import Log, PairedSuite, run_rounds
from benchmarks.training import quiet_lightning, run_alone
from benchmarks.transfer_quality import run_quality
from benchmarks.variants import comparisons, variants

SUITES = ("speed", "cache", "quality")
"""Suites in the order they run; ``--suites`` picks a subset."""


def _logger(started: float) -> Log:
    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device.")
    return torch.device(name)


def resolve_clock(name: str, device: torch.device) -> Clock:
    """The clock that judges: ``auto`` is the process's CPU time on the CPU and wall time on CUDA."""
    if name == "auto":
        return "wall" if device.type == "cuda" else "cpu"
    return "cpu" if name == "cpu" else "wall"


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
    log = _logger(started)
    quiet_lightning()
    one_arena = single_malloc_arena()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    tools = Instruments.for_device(device)
    machine = describe_machine(device)
    all_variants = variants()
    by_key = {v.key: v for v in all_variants}
    alone = run_alone(all_variants, config, tools, log) if "speed" in args.suites else {}
    clock = resolve_clock(config.clock, device)
    suites: list[PairedSuite] = []
    if "speed" in args.suites:
        suites += speed_suites(config, tools, clock, all_variants, comparisons(all_variants))
    cache = CacheSuite(config, tools, clock) if "cache" in args.suites else None
    if cache is not None:
        suites.append(cache)
    rounds = run_rounds(suites, config, log)
    machine["load_average_end"] = load_average()
    paired = [p for suite in suites if suite is not cache for p in suite.paired]
    targets = evaluate(alone, paired, cache, by_key, judged=not args.smoke)
    result: dict[str, Any] = {
        "schema": 2,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.run", *argv]),
        "smoke": args.smoke,
        "suites": args.suites,
        "config": asdict(config),
        "machine": machine,
        "memory_kind": tools.memory.kind,
        "memory_scope": tools.memory.scope,
        "cpu_accounting": tools.cpu.available,
        "clock": clock,
        "single_malloc_arena": one_arena,
        "rounds": rounds,
        "total_seconds": time.perf_counter() - started,
    }
    json_path, md_path = Results(result, alone, paired, targets, cache, by_key).write(args.out)
    if "quality" in args.suites:
        run_quality(args.out, args.smoke)
        print(f"wrote {args.out / 'transfer_quality.md'}")
    for target in targets:
        print(f"{target.verdict:>12}  {target.name}: {target.measured} = {target.value:.4g}")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
