"""``python -m benchmarks.replay RUN/benchmarks.json [...]``: how often a run ends in each verdict, from rounds
already recorded.

For every judged comparison, the rounds that the given runs recorded (their raw steps) form a pool. A
*replay* is a run made of rounds drawn from that pool at random, with replacement, fed through the same
stopping rule and interval as a real run (:func:`benchmarks.sessions.run_rounds`,
:class:`benchmarks.pairing.PairedComparison`): at least ``--rounds``, two more while inconclusive, at most
``--max-rounds``. The share of replays that end in each verdict estimates what a new run on the same kind
of machine would say, and the chance that two runs agree (the sum of the squared shares) shows whether
``--max-rounds`` is enough for that target. Each comparison is replayed on its own: in a real run another
inconclusive comparison of its session can keep it going longer, so real runs use at least as many rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from benchmarks.config import BenchConfig
from benchmarks.measure import Sample
from benchmarks.pairing import Comparison, Interval, PairedComparison, Verdict
from benchmarks.report import markdown_table
from benchmarks.sessions import run_rounds

VERDICTS: tuple[Verdict, ...] = ("pass", "inconclusive", "miss")


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


@dataclass
class ReplaySuite:
    """One replay of one pool: each round is a recorded round drawn at random (a :class:`PairedSuite`)."""

    pool: PairedComparison
    rng: random.Random
    paired: list[PairedComparison] = field(init=False)

    def __post_init__(self) -> None:
        self.paired = [PairedComparison(self.pool.comparison, self.pool.clock, self.pool.threshold)]

    @property
    def name(self) -> str:
        return self.pool.comparison.key

    def run_round(self, reverse: bool) -> None:
        self.paired[0].add_round(*self.rng.choice(self.pool.rounds))


@dataclass(frozen=True)
class Outcome:
    """Replays of one pool: the share ending in each verdict, the rounds a replay used on average, and the
    share of replays that ran to ``max_rounds``."""

    pool: PairedComparison
    shares: dict[Verdict, float]
    mean_rounds: float
    max_rounds_reached: float

    @property
    def agreement(self) -> float:
        """The chance that two independent runs end in the same verdict."""
        return sum(share * share for share in self.shares.values())


def replay(pool: PairedComparison, config: BenchConfig, replays: int, seed: int = 0) -> Outcome:
    """``replays`` runs of ``pool`` under ``config``'s rounds, max_rounds and stopping rule."""
    if replays < 1:
        raise ValueError(f"replays must be at least 1, got {replays}.")
    rng = random.Random(seed)
    unbounded = replace(config, budget_s=sys.maxsize)  # a replay takes no time to measure
    verdicts: list[Verdict] = []
    used: list[int] = []
    for _ in range(replays):
        suite = ReplaySuite(pool, rng)
        used.append(run_rounds([suite], unbounded, lambda message: None)[suite.name])
        verdict = suite.paired[0].verdict()
        assert verdict is not None, "only judged comparisons are pooled"
        verdicts.append(verdict)
    return Outcome(
        pool,
        {v: verdicts.count(v) / replays for v in VERDICTS},
        statistics.fmean(used),
        used.count(config.max_rounds) / replays,
    )


def _interval_text(interval: Interval) -> str:
    return f"{interval.median:.3f} ({interval.low:.3f}-{interval.high:.3f})"


def table(outcomes: Sequence[Outcome], config: BenchConfig) -> list[str]:
    rows = [
        [
            o.pool.comparison.key,
            f"{o.pool.comparison.direction} {o.pool.comparison.goal}",
            _interval_text(o.pool.interval()),
            str(len(o.pool.rounds)),
            *(f"{o.shares[v]:.3f}" for v in VERDICTS),
            f"{o.mean_rounds:.1f}",
            f"{o.max_rounds_reached:.3f}",
            f"{o.agreement:.3f}",
        ]
        for o in outcomes
    ]
    header = ["comparison", "goal", "median ratio, all rounds (95% interval)", "rounds pooled", *VERDICTS]
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
