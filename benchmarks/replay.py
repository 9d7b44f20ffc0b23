"""``python -m benchmarks.replay RUN/benchmarks.json [...]``: how often a run ends in each verdict, from rounds
already recorded.

The rounds that the given runs recorded form a pool per judged comparison; each replay draws rounds from it
through the stopping rule (:func:`benchmarks.stats.replay`). The share of replays ending in each verdict
estimates what a new run on the same kind of machine would say, and the chance that two runs agree shows
whether ``--max-rounds`` is enough for that target.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from benchmarks.config import BenchConfig
from benchmarks.measure import Sample
from benchmarks.results import markdown_table
from benchmarks.stats import REPLAYED, Comparison, Interval, Outcome, PairedComparison, replay


def load_pools(paths: Sequence[Path]) -> list[PairedComparison]:
    """The judged comparisons of the runs in ``paths``, each with the rounds of every run that has it (a pool)."""
    pools: dict[str, PairedComparison] = {}
    for path in paths:
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("smoke"):
            raise ValueError(f"{path} is a smoke-size run: its rounds judge nothing.")
        for entry in data["paired"]:
            comparison = Comparison(**{f.name: entry[f.name] for f in fields(Comparison)})
            if comparison.goal is None:
                continue
            pool = pools.setdefault(
                comparison.key, PairedComparison(comparison, entry["clock"], float(data["config"]["quiet_share"]))
            )
            for recorded in entry["rounds"]:
                pool.add_round([Sample(**s) for s in recorded["a"]], [Sample(**s) for s in recorded["b"]])
    if not pools:
        raise ValueError("the runs given have no judged comparison.")
    return list(pools.values())


def _interval_text(interval: Interval) -> str:
    return f"{interval.median:.3f} ({interval.low:.3f}-{interval.high:.3f})"


def table(outcomes: Sequence[Outcome], config: BenchConfig) -> list[str]:
    rows = [
        [
            o.pool.comparison.key,
            f"{o.pool.comparison.direction} {o.pool.comparison.goal}",
            _interval_text(o.pool.interval()),
            str(len(o.pool.rounds)),
            *(f"{o.shares[v]:.3f}" for v in REPLAYED),
            f"{o.mean_rounds:.1f}",
            f"{o.max_rounds_reached:.3f}",
            f"{o.agreement:.3f}",
        ]
        for o in outcomes
    ]
    header = ["comparison", "goal", "median ratio, all rounds (95% interval)", "rounds pooled", *REPLAYED]
    header += ["rounds used (mean)", f"reached {config.max_rounds}", "two runs agree"]
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="benchmarks.json of one or more full-size runs")
    defaults = BenchConfig()
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help=f"default {defaults.rounds}")
    parser.add_argument("--max-rounds", type=int, default=defaults.max_rounds, help=f"default {defaults.max_rounds}")
    parser.add_argument("--replays", type=int, default=200, help="replayed runs per comparison (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    args = parser.parse_args(argv)
    try:
        config = replace(defaults, rounds=args.rounds, max_rounds=args.max_rounds)
        outcomes = [replay(pool, config, args.replays, args.seed) for pool in load_pools(args.runs)]
    except (ValueError, TypeError, OSError, KeyError) as error:  # JSONDecodeError is a ValueError
        parser.error(f"{type(error).__name__}: {error}")
    print(
        f"{args.replays} replays per comparison, rounds {config.rounds} to {config.max_rounds}, "
        f"from {', '.join(str(p) for p in args.runs)}\n"
    )
    print("\n".join(table(outcomes, config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
