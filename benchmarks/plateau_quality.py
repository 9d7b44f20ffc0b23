"""Fixed against plateau-triggered unfreezing: the demo's ``freeze_unfreeze`` at its fixed epoch next to
the same strategy unfreezing when validation accuracy plateaus, over the same few-shot seeds.

    python -m benchmarks.plateau_quality --out results/          # 5 seeds, the demo's full settings
    python -m benchmarks.plateau_quality --out results/ --smoke  # 2 seeds, the demo's fast settings

Both rows are the demo's runs (:mod:`finetune_strategies.demo.experiment`): same pretrained backbone,
splits, head initialisation and cosine schedule per seed; only the unfreeze trigger differs. The
plateau row (:func:`benchmarks.transfer_quality.plateau_recipe`) watches ``val_acc`` (the validation
split, never the test split) with patience 2, is capped at twice the fixed epoch, and restores the
frozen stage's best weights before it unfreezes (``restore_best``, on by default). The transition
epoch of a run is the first epoch in which the backbone trains. Writes ``plateau_quality.json`` and
``plateau_quality.md`` to ``--out``. The quality suite (:mod:`benchmarks.transfer_quality`) carries
the plateau row too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.transfer_quality import PLATEAU, SMOKE_SEEDS, cell, plateau_recipe, seeds_cli
from finetune_strategies.demo.experiment import DemoResult, DemoSettings, Recipe, RunResult, run_demo
from finetune_strategies.demo.report import mean_std

FIXED = "freeze_unfreeze"


@dataclass(frozen=True)
class PlateauSettings(DemoSettings):
    """The demo's fixed ``freeze_unfreeze`` run (without its WiSE-FT row) and the plateau-triggered one."""

    def recipes(self) -> list[Recipe]:
        fixed = next(r for r in super().recipes() if r.name == FIXED)
        return [replace(fixed, wise_ft=False), plateau_recipe(self)]


def transition_epoch(run: RunResult) -> int | None:
    """The first epoch in which the backbone trains (None: it never did)."""
    return next((epoch for epoch, share in enumerate(run.backbone_trainable) if share > 0), None)


def compare(result: DemoResult) -> list[dict[str, Any]]:
    """Per row: test accuracy and transition epoch per seed; over seeds, the mean and std of both and of
    the test accuracy's difference to the fixed row's on the same seed."""
    fixed = {run.seed: run.test_acc for run in result.by_strategy()[FIXED]}

    def over_seeds(values: list[float]) -> dict[str, float]:
        return dict(zip(("mean", "std"), mean_std(values), strict=True))

    rows = []
    for name, runs in result.by_strategy().items():
        epochs = [transition_epoch(run) for run in runs]
        rows.append(
            {
                "strategy": name,
                "schedule": result.settings.schedule(name),
                "seeds": [run.seed for run in runs],
                "per_seed": {"test_acc": [run.test_acc for run in runs], "transition_epoch": epochs},
                "test_acc": over_seeds([run.test_acc for run in runs]),
                "vs_fixed": over_seeds([run.test_acc - fixed[run.seed] for run in runs]),
                "transition_epoch": over_seeds([float(e) for e in epochs if e is not None]),
                "seconds": over_seeds([run.seconds for run in runs]),
            }
        )
    return rows


def _line(row: dict[str, Any]) -> str:
    per_seed = zip(row["seeds"], row["per_seed"]["transition_epoch"], row["per_seed"]["test_acc"], strict=True)
    seeds = ", ".join(f"{seed}: ep {epoch}, {100 * acc:.1f}%" for seed, epoch, acc in per_seed)
    cells = [cell(row["test_acc"]), cell(row["vs_fixed"], unit="", sign="+"), cell(row["transition_epoch"], 1.0, "")]
    return f"| {row['strategy']} | {row['schedule']} | {' | '.join(cells)} | {seeds} |"


def markdown(rows: list[dict[str, Any]], result: DemoResult) -> str:
    settings = result.settings
    caption = (
        f"{settings.backbone} fine-tuned for {settings.epochs} epochs with {settings.shots} images per class; "
        f"test accuracy on {result.test_size} held-out images, the trigger watching {result.val_size} validation "
        f"images; mean ± std over {len(settings.seeds)} seeds. Frozen epochs = the transition epoch (epochs 0 "
        "to it - 1 train the head only)."
    )
    header = "| recipe | schedule | test acc | vs fixed, paired (points) | frozen epochs | per seed: transition, acc |"
    return "\n".join([header, "|---|---|---|---|---|---|", *map(_line, rows), "", caption]) + "\n"


def run_plateau_quality(out: Path, smoke: bool, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run both rows over the seeds, write ``plateau_quality.json`` and ``.md``; return the JSON payload."""
    out.mkdir(parents=True, exist_ok=True)
    chosen = tuple(seeds or (SMOKE_SEEDS if smoke else DemoSettings.seeds))
    settings = PlateauSettings.fast(seeds=chosen) if smoke else PlateauSettings(seeds=chosen)
    result = run_demo(settings, out / "plateau_quality_work")
    rows = compare(result)
    payload = {"settings": vars(settings), "plateau": PLATEAU, "rows": rows}
    (out / "plateau_quality.json").write_text(json.dumps(payload, indent=2, default=list))
    (out / "plateau_quality.md").write_text(markdown(rows, result))
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    return seeds_cli(argv, __doc__, run_plateau_quality, "plateau_quality", "and .md")


if __name__ == "__main__":
    raise SystemExit(main())
