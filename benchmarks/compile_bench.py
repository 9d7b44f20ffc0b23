"""Compiled against eager: step time in the frozen phase and after the unfreeze, the compile time a phase change
costs, and a run of 20 phase changes that must stay compiled.

    python -m benchmarks.compile_bench --out results/          # CPU, inductor: a small CNN and a small ViT
    python -m benchmarks.compile_bench --out results/ --smoke  # tiny sizes, every code path, numbers meaningless

* **Step time per phase, paired**: ``freeze_unfreeze`` (the backbone unfrozen at epoch 1) on the same model,
  eager and compiled in place (:func:`finetune_strategies.core.compiled.compile_module`, ``torch.compile``'s
  defaults: inductor), in one lockstep ring (:mod:`benchmarks.lockstep`), timed as the speed suite's fits
  (:class:`benchmarks.training.StepClock`, warm-up steps dropped, so the steps that compile are not in the
  ratio); rounds alternate which goes first. The ratio compiled / eager is the median of the pair ratios
  with its interval (:func:`benchmarks.stats.median_interval`). Target: the frozen phase's ratio <= 1.0.
* **Compile time of a phase change**: the first step of each phase of the first round (which compiles) less
  the phase's median compiled step. Later rounds build new models of the same class: dynamo reuses the graphs,
  so their first steps are not compile times.
* **20 phase changes**: ``gradual_unfreeze`` over a 20-block MLP, compiled (inductor), one phase per epoch;
  the strategy's compile report must show a graph compiled after every change (none runs eagerly), at most
  one per change (no validation here), and no fall back. Each change's compile time is recorded too.

Writes ``compile_bench.json`` and ``compile_bench.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.config import SMOKE, BenchConfig
from benchmarks.lockstep import HandOver, run_ring
from benchmarks.measure import Instruments, describe_machine, load_average
from benchmarks.results import PhaseRecord, Target, targets_table
from benchmarks.stats import median_interval
from benchmarks.training import fit_timed, quiet_lightning, trainer_options
from benchmarks.workload import Backbone, BenchModel
from finetune_strategies import FinetuningStrategy, resolve_strategy
from finetune_strategies.core.compiled import compile_module

Mode = Literal["eager", "compiled"]
MODES: tuple[Mode, ...] = ("eager", "compiled")
PHASES = ("frozen", "unfrozen")
BACKBONES: tuple[Backbone, ...] = ("cnn", "vit")
FULL = replace(
    BenchConfig(), model="resnet10t", image_size=64, batch_size=16, warmup=2, steps=10, rounds=3, device="cpu"
)
"""A small CNN (timm's resnet10t, 4.9M parameters) at 64 px and a small ViT (vit_tiny_patch16_224 built for 64 px,
5.5M), batch 16, 10 measured steps per phase after 2 warm-up steps, 3 rounds; one thread."""
SMOKE_CONFIG = replace(SMOKE, steps=2, warmup=2, rounds=2, max_rounds=2, device="cpu")
Compiler = dict[str, Any]
"""``torch.compile`` arguments: ``{}`` (inductor) at full size; ``aot_eager`` at smoke size, where inductor's C++
compile of every graph (about a minute each on a small CPU) would make the smoke run take many minutes."""
FULL_COMPILER: Compiler = {}
SMOKE_COMPILER: Compiler = {"backend": "aot_eager"}
CHANGES = 20
MLP_WIDTH = 64


class FirstSteps(Callback):
    """The wall time of each epoch's first step (between the clocks, so a ring's hand-over is not in it)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, index: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if args[-1] == 0:
            self.seconds.append(time.perf_counter() - self._started)


def fit_mode(
    mode: Mode, backbone: Backbone, config: BenchConfig, tools: Instruments, hand_over: HandOver, compiler: Compiler
) -> tuple[list[PhaseRecord], list[float]]:
    """One fit of ``freeze_unfreeze`` (unfreeze at epoch 1), eager or compiled; its phases and first steps."""
    phases = [PhaseRecord(phase, None, config.quiet_share) for phase in PHASES]
    model = BenchModel(config, backbone)
    if mode == "compiled":
        compile_module(model, compiler)
    first = FirstSteps()
    strategy = resolve_strategy(("freeze_unfreeze", 1), train_bn=False)
    fit_timed(config, tools, [strategy, first], phases, backbone, hand_over=hand_over, model=model)
    return phases, first.seconds


def measure_backbone(backbone: Backbone, config: BenchConfig, tools: Instruments, compiler: Compiler) -> dict[str, Any]:
    """Paired rounds eager / compiled; per phase the ratio, and the first round's compile times."""
    rounds: list[dict[Mode, tuple[list[PhaseRecord], list[float]]]] = []

    def fit(mode: Mode, hand_over: HandOver) -> tuple[list[PhaseRecord], list[float]]:
        return fit_mode(mode, backbone, config, tools, hand_over, compiler)

    for index in range(config.rounds):
        rounds.append(run_ring(MODES if index % 2 == 0 else MODES[::-1], fit))

    def steps(mode: Mode, phase: int) -> list[list[float]]:
        return [[s.step_s for s in r[mode][0][phase].samples] for r in rounds]

    result: dict[str, Any] = {"phases": {}}
    for i, phase in enumerate(PHASES):
        compiled, eager = steps("compiled", i), steps("eager", i)
        interval = median_interval(
            [[c / e for c, e in zip(a, b, strict=True)] for a, b in zip(compiled, eager, strict=True)]
        )
        compiled_ms = 1e3 * statistics.median([t for r in compiled for t in r])
        first_s = rounds[0]["compiled"][1][i]
        result["phases"][phase] = {
            "ratio": interval.median,
            "low": interval.low,
            "high": interval.high,
            "pairs": interval.pairs,
            "compiled_ms": compiled_ms,
            "eager_ms": 1e3 * statistics.median([t for r in eager for t in r]),
            "compile_s": first_s - compiled_ms / 1e3,
            "first_steps_s": [r["compiled"][1][i] for r in rounds],
        }
    return result


class DeepMLP(pl.LightningModule):
    """``CHANGES`` blocks of Linear and GELU, and a head: ``gradual_unfreeze`` makes one phase per block."""

    def __init__(self, blocks: int = CHANGES, width: int = MLP_WIDTH) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(blocks)])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)


def twenty_changes(config: BenchConfig, compiler: Compiler, device: torch.device) -> dict[str, Any]:
    """``gradual_unfreeze`` through ``CHANGES`` phase changes on a compiled :class:`DeepMLP`; its compile report."""
    model = compile_module(DeepMLP(), compiler)
    strategy = resolve_strategy(("gradual_unfreeze", 1))
    assert isinstance(strategy, FinetuningStrategy)
    first = FirstSteps()
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(4 * config.batch_size, MLP_WIDTH, generator=generator)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 10, (len(x),), generator=generator)), config.batch_size)
    options = trainer_options(device, CHANGES + 1, [strategy, first], limit_train_batches=2)
    started = time.perf_counter()
    pl.Trainer(**options).fit(model, loader)
    report = strategy.compile_report
    graphs = [p.graphs for p in report.phases]
    return {
        "phase_changes": len(report.phases) - 1,
        "graphs_per_phase": graphs,
        "recompiles": report.recompiles,
        "recompile_limit": report.recompile_limit,
        "fallbacks": report.fallbacks,
        "stayed_compiled": not report.fallbacks and all(g >= 1 for g in graphs),
        "at_most_one_per_change": all(g <= 1 for g in graphs[1:]),
        "first_steps_s": first.seconds,
        "total_s": time.perf_counter() - started,
    }


def targets(payload: dict[str, Any], judged: bool) -> list[Target]:
    """The issue's three targets: the frozen phase's ratio (judged on its interval, not at smoke size), at most
    one graph per phase change (one compiled region, no validation), and no fall back in 20 changes."""
    rows = []
    for backbone, result in payload["speed"].items():
        frozen = result["phases"]["frozen"]
        rows.append(
            Target(
                f"compile: {backbone} frozen step compiled / eager <= 1.0",
                f"{payload['models'][backbone]}, freeze_unfreeze, compile_kwargs {payload['compile_kwargs']}",
                frozen["ratio"],
                1.0,
                "<=",
                frozen["low"],
                frozen["high"],
                f"{frozen['pairs']} pairs",
                judged,
            )
        )
    twenty = payload["twenty"]
    graphs = twenty["graphs_per_phase"]
    rows.append(
        Target(
            "compile: graphs per phase change <= 1 per compiled region",
            f"largest of {len(graphs) - 1} changes, one region, no validation",
            max(graphs[1:], default=0),
            1,
            "<=",
        )
    )
    eager = len(twenty["fallbacks"]) + sum(1 for g in graphs if g == 0)
    rows.append(
        Target(
            "compile: 20 phase changes, no fall back to eager", "falls back + stages without a graph", eager, 0, "<="
        )
    )
    return rows


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "| model | phase | compiled / eager step (median of pairs) | 95% interval | compiled ms | eager ms "
        "| compile s (first round) | pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backbone, result in payload["speed"].items():
        for phase, r in result["phases"].items():
            lines.append(
                f"| {payload['models'][backbone]} | {phase} | {r['ratio']:.3f} | {r['low']:.3f} to {r['high']:.3f} "
                f"| {r['compiled_ms']:.1f} | {r['eager_ms']:.1f} | {r['compile_s']:.1f} | {r['pairs']} |"
            )
    twenty = payload["twenty"]
    changes = twenty["first_steps_s"][1:]
    lines += ["", *targets_table([Target(**t) for t in payload["targets"]])]
    lines += [
        "",
        f"- {twenty['phase_changes']} phase changes (`gradual_unfreeze`, {CHANGES}-block MLP, compile_kwargs "
        f"{payload['compile_kwargs']}): graphs per "
        f"phase {twenty['graphs_per_phase']}, {twenty['recompiles']} recompiles under a recompile limit of "
        f"{twenty['recompile_limit']}; stayed compiled to the end: **{twenty['stayed_compiled']}**; falls back: "
        f"{len(twenty['fallbacks'])}; first step after a change (compile included) median "
        f"{statistics.median(changes) if changes else float('nan'):.1f} s, {twenty['total_s']:.0f} s in all.",
        f"- Machine: {payload['machine'].get('gpu') or payload['machine'].get('cpu', '?')} "
        f"({payload['machine'].get('usable_cores')} CPU cores), load "
        f"average {payload['load_average_start']} at the start, {payload['load_average_end']} at the end; torch "
        f"{torch.__version__}, {payload['config']['threads']} thread(s).",
    ]
    return "\n".join(lines) + "\n"


def run_compile_bench(
    out: Path, smoke: bool, device: str = "cpu", compile_kwargs: Compiler | None = None
) -> dict[str, Any]:
    """Run the three measurements, write ``compile_bench.json`` and ``compile_bench.md``; return the payload.
    ``compile_kwargs`` replace the size's default (``tests/gpu/test_compiled_gpu.py`` passes CUDA graphs on and off)."""
    config, compiler = (SMOKE_CONFIG, SMOKE_COMPILER) if smoke else (FULL, FULL_COMPILER)
    config = replace(config, device=device)
    compiler = compiler if compile_kwargs is None else compile_kwargs
    quiet_lightning()
    if config.threads:
        torch.set_num_threads(config.threads)
    where = torch.device(device)
    tools = Instruments.for_device(where)
    payload: dict[str, Any] = {
        "config": asdict(config),
        "machine": describe_machine(where),
        "load_average_start": load_average(),
        "compile_kwargs": compiler,
        "models": {
            "cnn": f"{config.model} {config.image_size} px",
            "vit": f"{config.vit_model} {config.vit_image_size} px",
        },
    }
    payload["speed"] = {backbone: measure_backbone(backbone, config, tools, compiler) for backbone in BACKBONES}
    payload["twenty"] = twenty_changes(config, compiler, where)
    payload["load_average_end"] = load_average()
    payload["targets"] = [asdict(t) for t in targets(payload, judged=not smoke)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_bench.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / "compile_bench.md").write_text(markdown(payload))
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every code path, numbers meaningless")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--compile-kwargs",
        type=json.loads,
        default=None,
        help='torch.compile arguments as JSON, e.g. \'{"mode": "reduce-overhead"}\' (default: {} at full size, '
        "aot_eager at smoke size)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run_compile_bench(args.out, args.smoke, args.device, args.compile_kwargs)
    print((args.out / "compile_bench.md").read_text())
    print(f"wrote {args.out / 'compile_bench.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
