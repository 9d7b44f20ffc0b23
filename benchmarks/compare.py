"""``python -m benchmarks.compare A/benchmarks.json B/benchmarks.json``: two runs' targets side by side.

Prints a Markdown table of every target with each run's median ratio (or value), interval and verdict,
and exits with status 1 when a target's verdict differs between the runs or a target is in only one
of them: two runs of the same commit must agree (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import Target, interval_text, markdown_table, target_texts


@dataclass(frozen=True)
class Run:
    """A run's description (``benchmarks.json`` less its measurements) and its targets, by (name, measured)."""

    label: str
    info: dict[str, Any]
    targets: dict[tuple[str, str], Target]

    @classmethod
    def load(cls, label: str, path: Path) -> Run:
        data = json.loads(path.read_text())
        targets = [Target.from_json(t) for t in data["targets"]]
        return cls(label, data, {(t.name, t.measured): t for t in targets})

    def summary(self) -> str:
        """``run A: `command`, commit abc1234, finished ..., 1290 s, load average ..., rounds: ...``"""
        machine = self.info["machine"]
        rounds = ", ".join(f"{name}: {count}" for name, count in self.info["rounds"].items())
        return (
            f"{self.label}: `{self.info['command']}`, commit {machine.get('git_commit')}, finished "
            f"{self.info['created']}, {self.info['total_seconds']:.0f} s, load average (1 min) "
            f"{machine['load_average_start'][0]} at the start and {machine.get('load_average_end', ['?'])[0]} at the "
            f"end; rounds: {rounds}."
        )


def _cell(target: Target | None) -> list[str]:
    if target is None:
        return ["-", "-", "absent"]
    return [target_texts(target)[0], interval_text(target.low, target.high, target.direction), f"**{target.verdict}**"]


def side_by_side(a: Run, b: Run) -> tuple[list[str], int]:
    """The Markdown table (one row per target: each run's value, interval and verdict, and whether the verdicts
    agree), and how many targets differ in verdict or are in one run only."""
    rows, differ = [], 0
    for key in list(a.targets) + [k for k in b.targets if k not in a.targets]:
        row_a, row_b = a.targets.get(key), b.targets.get(key)
        same = row_a is not None and row_b is not None and row_a.verdict == row_b.verdict
        differ += not same
        rows.append([*key, *_cell(row_a), *_cell(row_b), "yes" if same else "**no**"])
    header = ["target", "measured"]
    for label in (a.label, b.label):
        header += [f"{label}: ratio / value", f"{label}: 95% interval", f"{label}: verdict"]
    return markdown_table([*header, "same verdict"], rows), differ


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the first run's benchmarks.json")
    parser.add_argument("b", type=Path, help="the second run's benchmarks.json")
    args = parser.parse_args(argv)
    a, b = Run.load("run A", args.a), Run.load("run B", args.b)
    table, differ = side_by_side(a, b)
    print("\n".join([f"- {a.summary()}", f"- {b.summary()}", "", *table]))
    print(
        f"\n{differ} of {len(set(a.targets) | set(b.targets))} targets differ in verdict."
        if differ
        else "\nEvery target has the same verdict in both runs."
    )
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
