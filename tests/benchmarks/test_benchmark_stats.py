"""The statistics that judge the benchmark targets, on fixed numbers: the pairing, the interval, the verdict
rule, the stopping rule for rounds, the lockstep that makes the pairs, the sessions it runs, and the comparison of
two runs' verdicts."""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks.compare import main as compare_main  # noqa: E402
from benchmarks.config import SMOKE, BenchConfig  # noqa: E402
from benchmarks.lockstep import HandOver, Lockstep  # noqa: E402
from benchmarks.measure import Sample  # noqa: E402
from benchmarks.replay import load_pools  # noqa: E402
from benchmarks.replay import main as replay_main  # noqa: E402
from benchmarks.results import Target, paired_json  # noqa: E402
from benchmarks.stats import (  # noqa: E402
    Comparison,
    Pair,
    PairedComparison,
    judge,
    median_interval,
    pair_up,
    replay,
    run_rounds,
    usable,
)
from benchmarks.variants import comparisons, group_sessions, variants  # noqa: E402


def test_pairs_are_step_i_with_step_i_and_quiet_only_when_both_are() -> None:
    a = [Sample(0.110, 0.01, cpu_s=0.100), Sample(0.120, 0.30, cpu_s=0.104), Sample(0.100, None, cpu_s=0.099)]
    b = [Sample(0.100, 0.02, cpu_s=0.100), Sample(0.100, 0.01, cpu_s=0.100), Sample(0.125, 0.05, cpu_s=0.100)]
    pairs = pair_up(a, b, threshold=0.1)
    assert [round(p.ratio, 6) for p in pairs] == [1.1, 1.2, 0.8]
    assert [p.quiet for p in pairs] == [True, False, True], "a step with unknown load counts as quiet"
    by_cpu = pair_up(a, b, threshold=0.1, clock="cpu")
    assert [round(p.ratio, 6) for p in by_cpu] == [1.0, 1.04, 0.99], "the same steps by the process's CPU time"
    with pytest.raises(ValueError, match="as many steps"):
        pair_up(a, b[:2], threshold=0.1)
    with pytest.raises(ValueError, match="no CPU time"):
        pair_up([Sample(0.1)], [Sample(0.1)], threshold=0.1, clock="cpu")


def test_a_round_uses_its_quiet_pairs_when_it_has_enough() -> None:
    quiet, busy = Pair(1.0, 1.0, True), Pair(2.0, 1.0, False)
    assert usable([quiet, busy, quiet, quiet]) == ([quiet, quiet, quiet], True)
    assert usable([quiet, busy, quiet, busy]) == ([quiet, busy, quiet, busy], False), "2 quiet of 4: all, flagged"
    assert usable([quiet, quiet]) == ([quiet, quiet], True), "a short round needs all of its pairs quiet"


def test_interval_of_identical_ratios_is_a_point() -> None:
    interval = median_interval([[1.05] * 8, [1.05] * 8])
    assert interval.median == pytest.approx(1.05)
    assert (interval.low, interval.high) == (pytest.approx(1.05), pytest.approx(1.05))
    assert (interval.rounds, interval.pairs) == (2, 16)
    assert interval.half_width == pytest.approx(0.0, abs=1e-12)


def test_interval_holds_the_median_within_the_data_and_is_reproducible() -> None:
    rounds = [[0.97, 1.02, 1.00, 1.04, 0.99, 1.01], [1.03, 1.05, 0.98, 1.02, 1.00, 1.06]]
    interval = median_interval(rounds)
    assert interval.median == pytest.approx(math.exp((math.log(1.01) + math.log(1.02)) / 2))
    assert 0.97 <= interval.low <= interval.median <= interval.high <= 1.06
    assert median_interval(rounds) == interval, "a fixed seed: the same pairs give the same interval"


def test_interval_of_reciprocal_ratios_is_reciprocal() -> None:
    rounds = [[0.9, 1.1, 1.3, 1.0, 1.2], [1.05, 0.95, 1.15, 1.25]]
    forward = median_interval(rounds)
    backward = median_interval([[1 / r for r in ratios] for ratios in rounds])
    assert backward.median == pytest.approx(1 / forward.median)
    assert (backward.low, backward.high) == (pytest.approx(1 / forward.high), pytest.approx(1 / forward.low))


def test_spread_between_rounds_widens_the_interval() -> None:
    """Two rounds that disagree by 10%: drawing whole rounds puts that disagreement into the interval,
    where treating all 16 pairs as one round would not."""
    calm = [1.000, 1.002, 0.998, 1.001, 0.999, 1.003, 0.997, 1.000]
    shifted = [r * 1.10 for r in calm]
    by_round = median_interval([calm, shifted])
    pooled = median_interval([calm + shifted])
    assert by_round.low <= 1.0
    assert by_round.high >= 1.09
    assert by_round.half_width > pooled.half_width


def test_interval_covers_the_true_median_at_about_its_confidence() -> None:
    """Rounds with their own offset (as on a shared machine) and noisy pairs around a known median of 1:
    the 95% interval holds it in most of 60 simulated comparisons (fixed seed)."""
    rng = random.Random(1)
    covered = 0
    for _ in range(60):
        rounds = []
        for _ in range(4):
            offset = rng.gauss(0, 0.02)
            rounds.append([math.exp(offset + rng.gauss(0, 0.05)) for _ in range(8)])
        interval = median_interval(rounds, resamples=400)
        covered += interval.low <= 1.0 <= interval.high
    assert covered >= 51  # at least 85%: a bootstrap over 4 rounds is a little narrow, not wildly so


@pytest.mark.parametrize(
    ("rounds", "message"),
    [([], "no pairs"), ([[]], "no pairs"), ([[1.0, 0.0]], "math domain"), ([[1.0, math.inf]], "positive and finite")],
)
def test_interval_refuses_what_it_cannot_use(rounds: list[list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        median_interval(rounds)


@pytest.mark.parametrize(
    ("low", "high", "goal", "direction", "verdict"),
    [
        (0.95, 1.01, 1.02, "<=", "pass"),
        (0.95, 1.02, 1.02, "<=", "pass"),  # an interval ending on the goal still meets it
        (1.00, 1.04, 1.02, "<=", "inconclusive"),
        (1.03, 1.06, 1.02, "<=", "miss"),
        (24.0, 31.0, 20.0, ">=", "pass"),
        (18.0, 22.0, 20.0, ">=", "inconclusive"),
        (15.0, 19.0, 20.0, ">=", "miss"),
        (0.0, 0.0, 0.0, "<=", "pass"),
    ],
)
def test_verdict_rule(low: float, high: float, goal: float, direction: str, verdict: str) -> None:
    assert judge(low, high, goal, direction) == verdict  # type: ignore[arg-type]


def test_verdict_refuses_an_upside_down_interval() -> None:
    with pytest.raises(ValueError, match="low end"):
        judge(1.1, 1.0, 1.02, "<=")


def test_targets_judge_their_interval_or_their_exact_value() -> None:
    assert Target("t", "m", 1.00, 1.02, "<=", 0.99, 1.03).verdict == "inconclusive"
    assert Target("t", "m", 1.00, 1.02, "<=", 0.99, 1.01).verdict == "pass"
    assert Target("t", "m", 0, 0, "<=").verdict == "pass"
    assert Target("t", "m", 512, 0, "<=").verdict == "miss"
    assert Target("t", "m", 1.5, 1.02, "<=", 1.4, 1.6, judged=False).verdict == "not judged (smoke size)"


def _samples(times_ms: list[float], others: float = 0.0, cpu_ms: list[float] | None = None) -> list[Sample]:
    cpu = cpu_ms or times_ms
    return [Sample(t / 1e3, others, cpu_s=c / 1e3) for t, c in zip(times_ms, cpu, strict=True)]


def test_paired_comparison_pools_rounds_and_judges_its_goal_by_its_clock() -> None:
    comparison = PairedComparison(Comparison("t", "a", "b", "frozen", "frozen", 1.10), "wall", 0.1)
    # Round 1: the machine slows down during the round; the pairs cancel it. Round 2: steady.
    comparison.add_round(_samples([101, 151, 202, 253]), _samples([100, 150, 200, 250]))
    comparison.add_round(_samples([100, 101, 102, 99]), _samples([100, 100, 100, 100]))
    interval = comparison.interval()
    assert (interval.rounds, interval.pairs) == (2, 8)
    assert 0.99 <= interval.low <= interval.median <= interval.high <= 1.02
    assert comparison.verdict() == "pass"
    assert comparison.decided
    by_cpu = PairedComparison(Comparison("t", "a", "b", "frozen", "frozen", 1.10), "cpu", 0.1)
    by_cpu.add_round(_samples([150, 150, 150], cpu_ms=[120, 121, 122]), _samples([100, 100, 100]))
    assert by_cpu.interval().median == pytest.approx(1.21)
    assert by_cpu.interval("wall").median == pytest.approx(1.5), "the other clock stays available"
    assert by_cpu.verdict() == "miss"
    calibration = PairedComparison(Comparison("c", "a", "b", "frozen", "frozen", None))
    calibration.add_round(_samples([100, 130]), _samples([120, 100]))
    assert calibration.verdict() is None, "no goal: nothing to judge"
    assert calibration.decided, "and nothing to decide"


def test_busy_pairs_count_only_when_a_round_has_too_few_quiet_ones() -> None:
    comparison = PairedComparison(Comparison("t", "a", "b", "full", "full", 1.02), "wall", 0.1)
    a = [Sample(0.100, 0.0)] * 4 + [Sample(0.300, 0.9)] * 2  # two steps slowed by a neighbour
    comparison.add_round(a, [Sample(0.100, 0.0)] * 6)
    assert comparison.used() == [([Pair(0.1, 0.1, True)] * 4, True)]
    assert comparison.interval().high == pytest.approx(1.0)
    with pytest.raises(ValueError, match="as many steps"):
        comparison.add_round(a, a[:2])


@dataclass
class _FixedSuite:
    """A suite whose rounds add fixed pairs: ratio ``ratio`` with a spread of ``spread``."""

    name: str
    ratio: float
    spread: float
    goal: float
    paired: list[PairedComparison] = field(default_factory=list)
    directions: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paired.append(PairedComparison(Comparison(self.name, "a", "b", "p", "p", self.goal), "wall", 0.1))

    def run_round(self, reverse: bool) -> None:
        self.directions.append(reverse)
        a = [self.ratio * (1 + self.spread * d) for d in (-1.0, -0.5, 0.0, 0.5, 1.0)]
        self.paired[0].add_round(_samples([100 * r for r in a]), _samples([100] * 5))


def test_rounds_stop_when_decided_and_extra_rounds_come_in_both_directions() -> None:
    config = replace(SMOKE, rounds=2, max_rounds=6, budget_s=3600)
    clear = _FixedSuite("clear", ratio=1.00, spread=0.01, goal=1.10)
    borderline = _FixedSuite("borderline", ratio=1.10, spread=0.05, goal=1.10)
    done = run_rounds([clear, borderline], config, lambda message: None)
    assert done == {"clear": 2, "borderline": 6}
    assert clear.directions == [False, True]
    assert borderline.directions == [False, True, False, True, False, True]
    assert borderline.paired[0].verdict() == "inconclusive"


def test_no_extra_round_starts_after_the_budget() -> None:
    config = replace(SMOKE, rounds=2, max_rounds=8, budget_s=0)
    borderline = _FixedSuite("borderline", ratio=1.10, spread=0.05, goal=1.10)
    assert run_rounds([borderline], config, lambda message: None) == {"borderline": 2}


def test_lockstep_runs_one_at_a_time_in_ring_order() -> None:
    events: list[str] = []
    running = threading.Semaphore(1)

    def body(name: str, steps: int) -> object:
        def run(hand_over: HandOver) -> None:
            for step in range(steps):
                assert running.acquire(blocking=False), "two runs worked at once"
                events.append(f"{name}{step}")
                time.sleep(0.001)
                running.release()
                hand_over()

        return run

    Lockstep(3).run([body("a", 3), body("b", 2), body("c", 3)])  # type: ignore[list-item]
    assert events == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "c2"], "b leaves the ring when it ends"


def test_lockstep_re_raises_a_failure_after_the_others_finish() -> None:
    finished: list[str] = []

    def fails(hand_over: HandOver) -> None:
        hand_over()
        raise RuntimeError("boom")

    def works(hand_over: HandOver) -> None:
        for _ in range(3):
            hand_over()
        finished.append("works")

    with pytest.raises(RuntimeError, match="boom"):
        Lockstep(2).run([fails, works])
    assert finished == ["works"]


def test_sessions_put_both_sides_of_every_comparison_in_one_ring() -> None:
    all_variants = variants()
    all_comparisons = comparisons(all_variants)
    sessions = group_sessions(all_variants, all_comparisons)
    session_of = {key: s for s in sessions for key in s.keys}
    for c in all_comparisons:
        assert session_of[c.a] is session_of[c.b], c.key
    assert sum(len(s.keys) for s in sessions) == len(session_of), "each variant in one session"
    backbone = session_of["lightning.backbone_finetuning"]
    assert backbone.epochs == {
        "minimal.frozen_bn": 1,
        "lightning.backbone_finetuning": 2,
        "ours.freeze_unfreeze.train_bn": 2,
    }, "the unfrozen phase is compared, so both run two epochs; the minimal loop one"
    frozen = session_of["minimal.frozen"]
    assert set(frozen.epochs.values()) == {1}, "frozen phases only: one epoch each"
    assert {"ours.gradual_unfreeze", "ours.phases", "ours.gradual_unfreeze.layer_lr_decay"} <= set(frozen.keys)
    assert "minimal.full" not in session_of, "compared with nothing: never in a ring"


def _run_file(folder: Path, targets: list[Target]) -> Path:
    machine = {"git_commit": "abc1234", "load_average_start": [6.0, 5.0, 4.0], "load_average_end": [7.0, 6.0, 5.0]}
    run = {"command": "python -m benchmarks.run", "created": "2026-01-01T00:00:00+00:00", "total_seconds": 60.0}
    folder.mkdir()
    path = folder / "benchmarks.json"
    path.write_text(
        json.dumps({**run, "machine": machine, "rounds": {"s": 4}, "targets": [t.to_json() for t in targets]})
    )
    return path


def test_compare_flags_a_verdict_that_differs_between_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = Target("groups <= 1.03x", "14 / 1", 1.002, 1.03, "<=", 0.99, 1.02, "32 pairs")
    frozen = Target("frozen <= 1.10x", "freeze / minimal", 1.01, 1.10, "<=", 0.99, 1.03, "32 pairs")
    state = Target("zero bytes", "freeze", 0, 0, "<=")
    first = _run_file(tmp_path / "a", [groups, frozen, state])
    agreeing = _run_file(tmp_path / "b", [replace(groups, value=1.0, high=1.025), frozen, state])
    assert compare_main([str(first), str(agreeing)]) == 0
    out = capsys.readouterr().out
    assert "Every target has the same verdict in both runs." in out
    assert (
        "| groups <= 1.03x | 14 / 1 | 1.002x | 0.990x-1.020x | **pass** | 1.000x | 0.990x-1.025x | **pass** | yes |"
        in out
    )

    flipped = _run_file(tmp_path / "c", [replace(groups, high=1.04), frozen])  # inconclusive, and no state target
    assert compare_main([str(first), str(flipped)]) == 1
    out = capsys.readouterr().out
    assert "| **inconclusive** | **no** |" in out
    assert "| zero bytes | freeze | 0 B | - | **pass** | - | - | absent | **no** |" in out
    assert "2 of 3 targets differ in verdict." in out


def _replay_run(path: Path, rounds: list[tuple[float, float]], goal: float, smoke: bool = False) -> Path:
    """A run file with one judged comparison whose round ``k`` has 5 pairs around ``ratio`` with ``spread``."""
    comparison = PairedComparison(Comparison("t <= goal", "ours.x", "minimal.x", "frozen", "frozen", goal), "cpu", 0.1)
    for ratio, spread in rounds:
        a = [100 * ratio * (1 + spread * d) for d in (-1.0, -0.5, 0.0, 0.5, 1.0)]
        comparison.add_round(_samples(a, cpu_ms=a), _samples([100] * 5))
    data = {"smoke": smoke, "config": {"quiet_share": 0.1}, "paired": [paired_json(comparison)]}
    path.write_text(json.dumps(data))
    return path


def test_replay_reads_the_recorded_rounds_and_replays_them_through_the_stopping_rule(tmp_path: Path) -> None:
    """Rounds drawn from a clear pool decide at once; from a pool on its goal they run to the cap and stay
    inconclusive; two run files pool their rounds."""
    clear = [(1.00 + 0.01 * (k % 3 - 1), 0.02) for k in range(6)]
    first = _replay_run(tmp_path / "a.json", clear, goal=1.10)
    second = _replay_run(tmp_path / "b.json", clear[:4], goal=1.10)
    (pool,) = load_pools([first, second])
    assert len(pool.rounds) == 10
    assert [s.cpu_s for s in pool.rounds[0][0]] == pytest.approx([0.09702, 0.09801, 0.099, 0.09999, 0.10098])
    assert [s.cpu_s for s in pool.rounds[0][1]] == pytest.approx([0.1] * 5)
    config = replace(BenchConfig(), rounds=4, max_rounds=8)
    outcome = replay(pool, config, replays=20)
    assert outcome.shares == {"pass": 1.0, "inconclusive": 0.0, "miss": 0.0}
    assert (outcome.mean_rounds, outcome.max_rounds_reached, outcome.agreement) == (4.0, 0.0, 1.0)

    on_goal = [(1.10 * (1 + 0.02 * (k % 3 - 1)), 0.03) for k in range(6)]
    (pool,) = load_pools([_replay_run(tmp_path / "c.json", on_goal, goal=1.10)])
    outcome = replay(pool, config, replays=20)
    assert outcome.shares["inconclusive"] > 0.5
    assert outcome.max_rounds_reached >= outcome.shares["inconclusive"], "an undecided replay ran to the cap"
    assert 4 < outcome.mean_rounds <= 8
    assert replay(pool, config, replays=20) == outcome, "a fixed seed: the same draws"


def test_replay_prints_each_comparisons_shares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _replay_run(tmp_path / "a.json", [(1.00 + 0.01 * (k % 3 - 1), 0.02) for k in range(6)], goal=1.10)
    assert replay_main([str(run), "--replays", "5", "--max-rounds", "8"]) == 0
    out = capsys.readouterr().out
    assert "5 replays per comparison, rounds 4 to 8" in out
    assert "| ours.x/frozen vs minimal.x/frozen | <= 1.1 | 1.000 (" in out
    assert out.rstrip().endswith("| 6 | 1.000 | 0.000 | 0.000 | 4.0 | 0.000 | 1.000 |")


def test_replay_refuses_what_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smoke = _replay_run(tmp_path / "smoke.json", [(1.0, 0.01)], goal=1.10, smoke=True)
    with pytest.raises(ValueError, match="smoke-size run"):
        load_pools([smoke])
    with pytest.raises(ValueError, match="replays must be at least 1"):
        replay(load_pools([_replay_run(tmp_path / "a.json", [(1.0, 0.01)], goal=1.1)])[0], BenchConfig(), 0)
    with pytest.raises(SystemExit) as exit_info:
        replay_main([str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    assert "missing.json" in capsys.readouterr().err
    broken = json.loads(_replay_run(tmp_path / "b.json", [(1.0, 0.01)], goal=1.1).read_text())
    broken["paired"][0]["rounds"][0]["a"][0] = {"seconds": 0.1}  # not a recorded step
    (tmp_path / "b.json").write_text(json.dumps(broken))
    with pytest.raises(SystemExit) as exit_info:
        replay_main([str(tmp_path / "b.json")])
    assert exit_info.value.code == 2
    assert "TypeError" in capsys.readouterr().err
