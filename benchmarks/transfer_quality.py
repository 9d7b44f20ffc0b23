"""Transfer quality: the demo's recipes over several few-shot draws, test accuracy as mean ± std.

    python -m benchmarks.transfer_quality --out results/          # 5 seeds, the demo's full settings
    python -m benchmarks.transfer_quality --out results/ --smoke  # 2 seeds, the demo's fast settings

Also run by ``python -m benchmarks.run`` as its ``quality`` suite. Writes
``transfer_quality.json``, ``transfer_quality.md`` and ``transfer_quality.png`` (validation
accuracy per epoch, frozen phases shaded) to ``--out``. Every accuracy in the table is the demo's
held-out test split's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_strategies.demo.experiment import DemoResult, DemoSettings, Recipe, run_demo
from finetune_strategies.demo.report import save_plot, summary

SMOKE_SEEDS = (0, 1)
LORA_RANK = 8
PLATEAU: dict[str, Any] = {"monitor": "val_acc", "mode": "max", "patience": 2}
"""The plateau row's trigger: unfreeze once validation accuracy has not improved for 2 validation runs."""
ON_PLATEAU = "freeze_unfreeze (plateau)"


def plateau_recipe(settings: DemoSettings) -> Recipe:
    """``freeze_unfreeze`` that unfreezes on a ``val_acc`` plateau, at twice the fixed epoch at the latest
    (compared with the fixed epoch in :mod:`benchmarks.plateau_quality`)."""
    cap = 2 * settings.unfreeze_epoch
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": cap, **PLATEAU}
    return Recipe(ON_PLATEAU, spec, f"backbone unfrozen when val_acc plateaus (patience 2), by epoch {cap}")


@dataclass(frozen=True)
class QualitySettings(DemoSettings):
    """The demo's runs plus a ``lora`` row (adapters in the frozen backbone's convolutions, with the head)
    and a plateau-triggered ``freeze_unfreeze`` row (:func:`plateau_recipe`)."""

    def recipes(self) -> list[Recipe]:
        schedule = f"LoRA r={LORA_RANK} on the frozen backbone's convolutions, with the head"
        lora = Recipe("lora", {"strategy": "lora", "r": LORA_RANK}, schedule)
        return [*super().recipes(), lora, plateau_recipe(self)]


def settings(smoke: bool, seeds: Sequence[int] | None = None) -> DemoSettings:
    """The demo's settings (fast ones with ``smoke``), with at least 5 seeds unless ``smoke``."""
    if smoke:
        return QualitySettings.fast(seeds=tuple(seeds or SMOKE_SEEDS))
    return QualitySettings(seeds=tuple(seeds)) if seeds else QualitySettings()


def summarize(result: DemoResult) -> list[dict[str, Any]]:
    """Per recipe: test accuracy, gain over the best from-scratch row, pretraining-task accuracy after
    fine-tuning, wall time per run, each as mean and std over seeds (the demo's summary)."""
    return [
        {
            "strategy": row["name"],
            "schedule": row["schedule"],
            "seeds": row["seeds"],
            **{
                key: {"mean": row[source][0], "std": row[source][1]}
                for key, source in (
                    ("test_acc", "test_acc"),
                    ("gain", "gain_over_scratch"),
                    ("pretrain_task_acc", "pretrain_task_acc"),
                    ("seconds", "seconds"),
                )
            },
        }
        for row in summary(result)
    ]


def cell(value: dict[str, float], scale: float = 100.0, unit: str = "%", sign: str = "") -> str:
    """A table cell: ``{"mean", "std"}`` as ``mean ± std``, scaled (percent by default); ``-`` for NaN."""
    if value["mean"] != value["mean"]:  # NaN: not measured for this row
        return "-"
    return f"{scale * value['mean']:{sign}.1f}{unit} ± {scale * value['std']:.1f}"


def markdown(rows: list[dict[str, Any]], result: DemoResult) -> str:
    s = result.settings
    lines = [
        "| recipe | schedule | test acc | vs scratch (points) | pretraining task after | wall time / run |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {row['schedule']} | {cell(row['test_acc'])} "
            f"| {cell(row['gain'], unit='', sign='+')} | {cell(row['pretrain_task_acc'])} "
            f"| {cell(row['seconds'], 1.0, ' s')} |"
        )
    lines.append("")
    lines.append(
        f"{s.backbone} pretrained on digits {''.join(map(str, s.pretrain_classes))} in {s.rotations} orientations "
        f"(pretraining-task accuracy {100 * result.pretrain_test_acc:.1f}% before fine-tuning), fine-tuned for "
        f"{s.epochs} epochs on digits {''.join(map(str, s.finetune_classes))} with {s.shots} images per class; "
        f"test accuracy on {result.test_size} held-out images ({result.val_size} more for choices); mean ± std over "
        f"{len(s.seeds)} seeds (splits)."
    )
    return "\n".join(lines) + "\n"


def run_quality(out: Path, smoke: bool, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its three files; return the JSON payload."""
    out.mkdir(parents=True, exist_ok=True)
    result = run_demo(settings(smoke, seeds), out / "transfer_quality_work")
    rows = summarize(result)
    payload = {
        "settings": {k: v for k, v in vars(result.settings).items()},
        "pretrain_test_acc": result.pretrain_test_acc,
        "val_size": result.val_size,
        "test_size": result.test_size,
        "rows": rows,
        "curves": {run.name + f"/seed{run.seed}": run.val_acc for run in result.runs},
    }
    (out / "transfer_quality.json").write_text(json.dumps(payload, indent=2, default=list))
    (out / "transfer_quality.md").write_text(markdown(rows, result))
    save_plot(result, out / "transfer_quality.png")
    return payload


def seeds_cli(
    argv: Sequence[str] | None,
    description: str | None,
    run: Callable[[Path, bool, Sequence[int] | None], object],
    stem: str,
    written: str,
) -> int:
    """The command line of a benchmark over the demo's seeds: ``--out``, ``--smoke``, ``--seeds``; runs
    ``run``, prints ``<out>/<stem>.md`` and which files were written (``written``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--smoke", action="store_true", help="the demo's fast settings, 2 seeds")
    parser.add_argument("--seeds", type=int, nargs="+", help="few-shot draws (default 0 1 2 3 4)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run(args.out, args.smoke, args.seeds)
    print((args.out / f"{stem}.md").read_text())
    print(f"wrote {args.out / f'{stem}.json'}, {written}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return seeds_cli(argv, __doc__, run_quality, "transfer_quality", ".md and .png")


if __name__ == "__main__":
    raise SystemExit(main())
