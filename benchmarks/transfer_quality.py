"""Transfer quality: the demo's strategies over several few-shot draws, as mean ± std.

    python -m benchmarks.transfer_quality --out results/          # 5 seeds, the demo's full settings
    python -m benchmarks.transfer_quality --out results/ --smoke  # 2 seeds, the demo's fast settings

Also run by ``python -m benchmarks.run`` as its ``quality`` suite. Writes
``transfer_quality.json``, ``transfer_quality.md`` and ``transfer_quality.png`` (validation
accuracy per epoch, frozen phases shaded) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_strategies.demo.experiment import DemoResult, DemoSettings, run_demo
from finetune_strategies.demo.report import save_plot
from finetune_strategies.registry import StrategySpec

SMOKE_SEEDS = (0, 1)
LORA_RANK = 8


@dataclass(frozen=True)
class QualitySettings(DemoSettings):
    """The demo's runs plus a ``lora`` row (adapters in the frozen backbone's convolutions, with the head)."""

    def strategies(self) -> list[tuple[str, StrategySpec, bool]]:
        return [*super().strategies(), ("lora", {"strategy": "lora", "r": LORA_RANK}, True)]

    def schedule(self, name: str) -> str:
        if name == "lora":
            return f"LoRA r={LORA_RANK} on the frozen backbone's convolutions, with the head"
        return super().schedule(name)


def settings(smoke: bool, seeds: Sequence[int] | None = None) -> DemoSettings:
    """The demo's settings (fast ones with ``smoke``), with at least 5 seeds unless ``smoke``."""
    if smoke:
        return QualitySettings.fast(seeds=tuple(seeds or SMOKE_SEEDS))
    return QualitySettings(seeds=tuple(seeds)) if seeds else QualitySettings()


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(result: DemoResult) -> list[dict[str, Any]]:
    """Per strategy: final and best accuracy, wall time per run, each as mean and std over seeds."""
    rows = []
    for name, runs in result.by_strategy().items():
        rows.append(
            {
                "strategy": name,
                "schedule": result.settings.schedule(name),
                "seeds": [run.seed for run in runs],
                "final_acc": _mean_std([run.val_acc[-1] for run in runs]),
                "best_acc": _mean_std([max(run.val_acc) for run in runs]),
                "seconds": _mean_std([run.seconds for run in runs]),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], result: DemoResult) -> str:
    s = result.settings
    lines = [
        "| strategy | schedule | final val acc | best val acc | wall time / run |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        final, best, seconds = row["final_acc"], row["best_acc"], row["seconds"]
        lines.append(
            f"| {row['strategy']} | {row['schedule']} | {100 * final['mean']:.1f}% ± {100 * final['std']:.1f} "
            f"| {100 * best['mean']:.1f}% ± {100 * best['std']:.1f} "
            f"| {seconds['mean']:.2f} s ± {seconds['std']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"{s.backbone} pretrained on digits {''.join(map(str, s.pretrain_classes))} "
        f"(val acc {100 * result.pretrain_acc:.1f}%), fine-tuned for {s.epochs} epochs on digits "
        f"{''.join(map(str, s.finetune_classes))} with {s.shots} images per class, validated on "
        f"{result.val_size} held-out images; mean ± std over {len(s.seeds)} seeds (few-shot draws)."
    )
    return "\n".join(lines) + "\n"


def run_quality(out: Path, smoke: bool, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its three files; return the JSON payload."""
    out.mkdir(parents=True, exist_ok=True)
    result = run_demo(settings(smoke, seeds), out / "transfer_quality_work")
    rows = summarize(result)
    payload = {
        "settings": {k: v for k, v in vars(result.settings).items()},
        "pretrain_acc": result.pretrain_acc,
        "val_size": result.val_size,
        "rows": rows,
        "curves": {run.name + f"/seed{run.seed}": run.val_acc for run in result.runs},
    }
    (out / "transfer_quality.json").write_text(json.dumps(payload, indent=2, default=list))
    (out / "transfer_quality.md").write_text(markdown(rows, result))
    save_plot(result, out / "transfer_quality.png")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--smoke", action="store_true", help="the demo's fast settings, 2 seeds")
    parser.add_argument("--seeds", type=int, nargs="+", help="few-shot draws (default 0 1 2 3 4)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run_quality(args.out, args.smoke, args.seeds)
    print((args.out / "transfer_quality.md").read_text())
    print(f"wrote {args.out / 'transfer_quality.json'}, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
