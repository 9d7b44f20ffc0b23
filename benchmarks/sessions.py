"""Running the variants: each alone (for memory, optimizer state and absolute step times), and in
sessions, where the variants of a session train in lockstep (:mod:`benchmarks.lockstep`) and every
comparison takes its pairs from them (:mod:`benchmarks.pairing`).

A session round trains a fresh model per variant, all at once, one step each in turn around the
ring; odd rounds go round the ring the other way, so no variant always steps right after the same
one. Rounds are added until every judged comparison of the session is decided (see
:func:`run_rounds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from benchmarks.config import BenchConfig
from benchmarks.lightning_runs import fit_timed
from benchmarks.lockstep import Body, HandOver, Lockstep
from benchmarks.measure import Clock, Instruments
from benchmarks.minimal import run_minimal
from benchmarks.pairing import Comparison, PairedComparison
from benchmarks.records import PhaseRecord, VariantRecord
from benchmarks.variants import Session, Variant, group_sessions

Log = Callable[[str], None]


def run_variant(
    variant: Variant,
    config: BenchConfig,
    tools: Instruments,
    epochs: int | None = None,
    hand_over: HandOver | None = None,
) -> VariantRecord:
    """Measure the first ``epochs`` phases of ``variant`` (all by default) once."""
    if variant.mode is not None:
        phases = [run_minimal(variant, config, tools, hand_over)]
    else:
        assert variant.callback is not None
        floors = variant.floors[:epochs]
        phases = [PhaseRecord(p, f, config.quiet_share) for p, f in zip(variant.phases, floors, strict=False)]
        fit_timed(config, tools, variant.callback(), phases, variant.backbone, hand_over)
    return VariantRecord(variant.key, variant.label, variant.group, variant.settings, phases)


class PairedSuite(Protocol):
    """Something that measures paired comparisons one round at a time."""

    @property
    def name(self) -> str: ...

    @property
    def paired(self) -> list[PairedComparison]: ...

    def run_round(self, reverse: bool) -> None:
        """Run one more round (the ring backwards when ``reverse``) and add its pairs."""


@dataclass
class SessionSuite:
    """The rounds of one session and the comparisons they feed."""

    session: Session
    variants: dict[str, Variant]
    paired: list[PairedComparison]
    config: BenchConfig
    tools: Instruments
    orders: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"session {self.session.name} ({len(self.session.keys)} variants)"

    def run_round(self, reverse: bool) -> None:
        order = self.session.keys[::-1] if reverse else self.session.keys
        records: dict[str, VariantRecord] = {}

        def body(key: str) -> Body:
            def run(hand_over: HandOver) -> None:
                variant = self.variants[key]
                records[key] = run_variant(variant, self.config, self.tools, self.session.epochs[key], hand_over)

            return run

        Lockstep(len(order)).run([body(key) for key in order])
        self.orders.append(order)
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


def run_rounds(suites: Sequence[PairedSuite], config: BenchConfig, log: Log) -> dict[str, int]:
    """Rounds of every suite, interleaved (round 1 of each, then round 2 of each, ...), so that each
    suite's rounds spread over the whole run.

    A suite runs at least ``config.rounds`` rounds. Then it gets two more (one in each direction of
    the ring) while one of its judged comparisons is inconclusive, up to ``config.max_rounds``; no
    extra round starts ``config.budget_s`` seconds after the first round started. Returns the rounds
    each suite ran.
    """
    started = time.perf_counter()
    done = {suite.name: 0 for suite in suites}
    for round_ in range(config.max_rounds):
        active = [s for s in suites if _wants_round(s, round_, done[s.name], config, started)]
        if not active:
            break
        for suite in active:
            log(f"round {round_ + 1}: {suite.name}")
            suite.run_round(reverse=round_ % 2 == 1)
            done[suite.name] += 1
    return done


def _wants_round(suite: PairedSuite, round_: int, ran: int, config: BenchConfig, started: float) -> bool:
    if ran < round_:  # it stopped earlier
        return False
    if round_ < config.rounds or (round_ - config.rounds) % 2 == 1:  # the second of two extra rounds always runs
        return True
    if time.perf_counter() - started > config.budget_s:
        return False
    return not all(p.decided for p in suite.paired)
