"""Runs that take turns, and the speed suite's sessions that use them.

:class:`Lockstep` runs several trainings in one process, each in its own thread, exactly one working at any
moment: a run works until it calls its ``hand_over`` (after every step, or every epoch), then waits, blocked
on a condition variable and using no CPU, while the others each take a turn in ring order. So step ``i`` of
every run is measured within seconds of step ``i`` of every other, under the same load. A run that ends, or
fails, leaves the ring; the others go on.

A *session* is a set of variants that comparisons connect (:func:`benchmarks.variants.group_sessions`); a
session round trains a fresh model per variant in one ring, and every second round goes round the ring the
other way, so that no variant always steps right after the same one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from benchmarks.config import BenchConfig
from benchmarks.measure import Clock, Instruments
from benchmarks.results import VariantRecord
from benchmarks.stats import Comparison, PairedComparison
from benchmarks.training import run_variant
from benchmarks.variants import Session, Variant, group_sessions

HandOver = Callable[[], None]
"""Gives the turn to the next run in the ring and returns when it comes back."""

Body = Callable[[HandOver], None]
"""One run: it receives its ``hand_over`` and calls it wherever it lets the others work."""

K = TypeVar("K")
R = TypeVar("R")


class Lockstep:
    """Turn-taking between ``count`` runs, in index order, starting with run 0."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a lockstep needs at least one run, got {count}.")
        self._condition = threading.Condition()
        self._turn = 0
        self._done = [False] * count

    def _pass_turn(self, index: int) -> None:
        """Give the turn to the next unfinished run after ``index`` (to ``index`` itself when none is left)."""
        count = len(self._done)
        following = ((index + step) % count for step in range(1, count + 1))
        self._turn = next((i for i in following if not self._done[i]), index)
        self._condition.notify_all()

    def hand_over(self, index: int) -> None:
        """Run ``index`` lets the next unfinished run work, and waits for its turn to come back."""
        with self._condition:
            self._pass_turn(index)
            self._condition.wait_for(lambda: self._turn == index)

    def run(self, bodies: Sequence[Body]) -> None:
        """Run ``bodies`` (one per index) in threads taking turns; re-raise the first failure."""
        if len(bodies) != len(self._done):
            raise ValueError(f"this lockstep takes {len(self._done)} runs, got {len(bodies)}.")
        errors: list[BaseException] = []

        def work(index: int, body: Body) -> None:
            with self._condition:
                self._condition.wait_for(lambda: self._turn == index)
            try:
                body(lambda: self.hand_over(index))
            except BaseException as error:
                errors.append(error)
            finally:
                with self._condition:
                    self._done[index] = True
                    self._pass_turn(index)

        threads = [
            threading.Thread(target=work, args=(i, body), name=f"lockstep-{i}", daemon=True)
            for i, body in enumerate(bodies)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


def run_ring(keys: Sequence[K], run: Callable[[K, HandOver], R]) -> dict[K, R]:
    """``run(key, hand_over)`` for every key, in one lockstep ring in the order of ``keys``; the results by key."""
    results: dict[K, R] = {}

    def body(key: K) -> Body:
        def work(hand_over: HandOver) -> None:
            results[key] = run(key, hand_over)

        return work

    Lockstep(len(keys)).run([body(key) for key in keys])
    return results


@dataclass
class SessionSuite:
    """The rounds of one session and the comparisons they feed (a :class:`benchmarks.stats.PairedSuite`)."""

    session: Session
    variants: dict[str, Variant]
    paired: list[PairedComparison]
    config: BenchConfig
    tools: Instruments

    @property
    def name(self) -> str:
        return f"session {self.session.name} ({len(self.session.keys)} variants)"

    def run_round(self, reverse: bool) -> None:
        def run(key: str, hand_over: HandOver) -> VariantRecord:
            return run_variant(self.variants[key], self.config, self.tools, self.session.epochs[key], hand_over)

        records = run_ring(self.session.keys[::-1] if reverse else self.session.keys, run)
        for paired in self.paired:
            c = paired.comparison
            paired.add_round(records[c.a].phase(c.phase).samples, records[c.b].phase(c.b_phase).samples)


def speed_suites(
    config: BenchConfig,
    tools: Instruments,
    clock: Clock,
    variants: Sequence[Variant],
    comparisons: Sequence[Comparison],
) -> list[SessionSuite]:
    """One suite per session; every comparison belongs to the session of its two variants, judged by ``clock``."""
    by_key = {v.key: v for v in variants}
    suites = []
    for session in group_sessions(list(variants), list(comparisons)):
        paired = [PairedComparison(c, clock, config.quiet_share) for c in comparisons if c.a in session.keys]
        suites.append(SessionSuite(session, by_key, paired, config, tools))
    return suites
