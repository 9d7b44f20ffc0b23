"""Full fine-tuning against ``lora``, side by side in one run: optimizer state, checkpoint, memory, step time.

    python -m benchmarks.lora_bench --out results/          # vit_small_patch16_224 at 64 px
    python -m benchmarks.lora_bench --out results/ --smoke  # a 2-block ViT-S at 32 px, for the test suite

Each variant fine-tunes the same ViT-S-shaped timm backbone (random weights: only shapes matter here)
with a linear head and AdamW over the trainable parameters, on random images, for ``--steps`` steps a
round; the variants take turns for ``--rounds`` rounds, so that they share the machine's conditions.
Per variant: optimizer-state bytes, the size and save time of the checkpoint the run writes
(``Trainer.save_checkpoint``), peak memory during training above what the process held before the
variant built its model (CUDA's allocator peak, or the process's peak RSS on CPU) and the median step
time. Writes ``lora_bench.json`` and ``lora_bench.md`` to ``--out``.

Variants: ``full`` (``no_freeze``), ``lora`` (r=8 on the default targets: ``qkv``, ``proj``, ``fc1``,
``fc2``), ``lora_attention`` (r=8 on ``qkv`` and ``proj`` only), and ``lora_full_ckpt`` (``lora`` with
``save_trainable_only=False``, to show what the trainable-only checkpoint saves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import BenchConfig
from benchmarks.measure import Instruments, Summary, describe_machine, load_average
from benchmarks.results import PhaseRecord, Target
from benchmarks.training import StepClock, quiet_lightning, trainer_options
from benchmarks.workload import BenchModel, make_loader
from finetune_strategies import Trainer
from finetune_strategies.strategies.registry import StrategySpec

VARIANTS: dict[str, StrategySpec] = {
    "full": "no_freeze",
    "lora": {"strategy": "lora", "r": 8},
    "lora_attention": {"strategy": "lora", "r": 8, "target_modules": r"re:.*\.attn\.(qkv|proj)$"},
    "lora_full_ckpt": {"strategy": "lora", "r": 8, "save_trainable_only": False},
}


@dataclass(frozen=True)
class LoraBenchConfig:
    """Sizes of the benchmark."""

    model: str = "vit_small_patch16_224"
    image_size: int = 64
    depth: int | None = None  # None: the model's own (12 for ViT-S)
    classes: int = 10
    batch_size: int = 16
    steps: int = 6
    warmup: int = 2
    rounds: int = 3
    lr: float = 1e-3

    @classmethod
    def smoke(cls) -> LoraBenchConfig:
        return cls(image_size=32, depth=2, batch_size=4, steps=3, warmup=1, rounds=1)

    def workload(self) -> BenchConfig:
        """The speed suite's workload (:class:`benchmarks.workload.BenchModel`, seed 0) at these sizes."""
        return BenchConfig(
            vit_model=self.model,
            vit_image_size=self.image_size,
            batch_size=self.batch_size,
            num_classes=self.classes,
            warmup=self.warmup,
            steps=self.steps,
            lr=self.lr,
        )


@dataclass
class VariantResult:
    """What one variant measured, over every round."""

    name: str
    params: int = 0
    trainable_params: int = 0
    optimizer_bytes: int = 0
    checkpoint_bytes: int = 0
    save_s: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["step_ms"] = asdict(Summary.of_seconds(self.step_s))
        data["peak_bytes_median"] = int(statistics.median(self.peak_bytes))
        data["save_s_median"] = statistics.median(self.save_s)
        return data


def run_variant(spec: StrategySpec, config: LoraBenchConfig, tools: Instruments, result: VariantResult) -> None:
    """One round of a variant: a fresh model, one epoch of ``config.steps`` steps, then a checkpoint."""
    tools.memory.begin_variant()
    workload, options = config.workload(), {} if config.depth is None else {"depth": config.depth}
    model = BenchModel(workload, "vit", **options)
    phase = PhaseRecord("train", None, 1.0)
    callbacks = list(StepClock([phase], config.warmup, tools).callbacks())
    trainer = Trainer(**trainer_options(tools.device, 1, callbacks))
    trainer.finetune(model, make_loader(workload, config.steps, backbone="vit"), strategy=spec)
    assert phase.optimizer is not None, "recorded at the end of the epoch"
    result.step_s += [sample.step_s for sample in phase.samples]
    result.peak_bytes.append(phase.peak_bytes - tools.memory.start_bytes)
    result.params = sum(p.numel() for p in model.parameters())
    result.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.optimizer_bytes = phase.optimizer.total_bytes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.ckpt"
        started = time.perf_counter()
        trainer.save_checkpoint(path)
        result.save_s.append(time.perf_counter() - started)
        result.checkpoint_bytes = path.stat().st_size


def ratios(results: dict[str, VariantResult]) -> list[Target]:
    """Each LoRA variant against full fine-tuning; the issue's goals on the first two rows."""
    full = results["full"]
    targets = []
    for name in ("lora", "lora_attention"):
        lora = results[name]
        targets += [
            Target(
                f"{name}: optimizer state", "lora / full bytes", lora.optimizer_bytes / full.optimizer_bytes, 0.02, "<="
            ),
            Target(
                f"{name}: checkpoint", "lora / full bytes", lora.checkpoint_bytes / full.checkpoint_bytes, 0.03, "<="
            ),
        ]
    return targets


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def markdown(results: dict[str, VariantResult], targets: list[Target], config: LoraBenchConfig, memory: str) -> str:
    full = results["full"]
    full_step = statistics.median(full.step_s)
    full_peak = statistics.median(full.peak_bytes)
    lines = [
        "| variant | trainable params | optimizer state | checkpoint (save time) | peak memory | step time (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        step, peak = statistics.median(r.step_s), statistics.median(r.peak_bytes)
        lines.append(
            f"| {name} | {r.trainable_params:,} ({100 * r.trainable_params / r.params:.2f}%) "
            f"| {_mib(r.optimizer_bytes)} ({100 * r.optimizer_bytes / full.optimizer_bytes:.2f}%) "
            f"| {_mib(r.checkpoint_bytes)} ({100 * r.checkpoint_bytes / full.checkpoint_bytes:.2f}%; "
            f"{statistics.median(r.save_s):.2f} s) "
            f"| {_mib(peak)} ({peak / full_peak:.2f}x) | {1e3 * step:.0f} ms ({step / full_step:.2f}x) |"
        )
    lines += ["", "| target | measured | value | goal | verdict |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.measured} | {100 * t.value:.2f}% | <= {100 * t.goal:.0f}% | {t.verdict} |")
    depth = f", depth {config.depth}" if config.depth is not None else ""
    lines += [
        "",
        f"{config.model}{depth} at {config.image_size} px, batch {config.batch_size}, AdamW; {config.rounds} "
        f"round(s) of {config.steps} steps per variant, taking turns, {config.warmup} warmup step(s) each; peak "
        f"memory is the {memory} during training above the memory in use before the model was built. "
        "Percentages and ratios are against `full`.",
    ]
    return "\n".join(lines) + "\n"


def run_bench(out: Path, config: LoraBenchConfig, device: torch.device) -> dict[str, Any]:
    """Run every variant for ``config.rounds`` rounds, taking turns; write the JSON and markdown files."""
    quiet_lightning()
    tools = Instruments.for_device(device)
    machine = describe_machine(device)
    results = {name: VariantResult(name) for name in VARIANTS}
    for _ in range(config.rounds):
        for name, spec in VARIANTS.items():
            run_variant(spec, config, tools, results[name])
    machine["load_average_end"] = load_average()
    targets = ratios(results)
    payload = {
        "config": asdict(config),
        "machine": machine,
        "memory": tools.memory.kind,
        "variants": {name: r.to_json() for name, r in results.items()},
        "targets": [t.to_json() for t in targets],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora_bench.json").write_text(json.dumps(payload, indent=2))
    (out / "lora_bench.md").write_text(markdown(results, targets, config, tools.memory.kind))
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--smoke", action="store_true", help="a 2-block ViT-S at 32 px, one short round")
    parser.add_argument("--image-size", type=int, help="pixels (default 64)")
    parser.add_argument("--rounds", type=int, help="turns per variant (default 3)")
    parser.add_argument("--steps", type=int, help="steps per round (default 6)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    config = LoraBenchConfig.smoke() if args.smoke else LoraBenchConfig()
    overrides = {"image_size": args.image_size, "rounds": args.rounds, "steps": args.steps}
    config = LoraBenchConfig(**{**asdict(config), **{k: v for k, v in overrides.items() if v is not None}})
    if args.threads:
        torch.set_num_threads(args.threads)
    run_bench(args.out, config, torch.device(args.device))
    print((args.out / "lora_bench.md").read_text())
    print(f"wrote {args.out / 'lora_bench.json'} and {args.out / 'lora_bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
