"""``finetune-strategies demo``: run the experiment with a progress bar, print the table, save the plot."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from finetune_strategies.demo.experiment import DemoResult, DemoSettings, run_demo
from finetune_strategies.demo.report import build_table, render_text, save_drift_plot, save_json, save_plot


def demo_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="finetune-strategies demo",
        description=(
            "Pretrain a small timm backbone on scikit-learn's digits 0-4, then fine-tune it few-shot on "
            "digits 5-9 with the built-in strategies and recipes (LP-FT, L2-SP, WiSE-FT) and from scratch. "
            "Prints a table of test accuracy and forgetting and saves plots. Needs no download."
        ),
        env_prefix="FINETUNE_STRATEGIES_DEMO",
    )
    parser.add_argument("--fast", action="store_true", help="Quick form: one seed, fewer epochs.")
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="Folder for the outputs.")
    parser.add_argument("--backbone", type=str | None, default=None, help="timm model (test_resnet).")
    parser.add_argument("--epochs", type=int | None, default=None, help="Fine-tuning epochs per run.")
    parser.add_argument("--pretrain_epochs", type=int | None, default=None, help="Pretraining epochs.")
    parser.add_argument("--shots", type=int | None, default=None, help="Training images per class.")
    parser.add_argument("--seeds", type=list[int] | None, default=None, help="Few-shot draws, e.g. [0,1,2].")
    parser.add_argument("--val_per_class", type=int | None, default=None, help="Validation images per class.")
    parser.add_argument("--test_per_class", type=int | None, default=None, help="Test images per class (all).")
    parser.add_argument("--threads", type=int | None, default=None, help="CPU threads (default 1).")
    return parser


def settings_from(args: Any) -> DemoSettings:
    settings = DemoSettings.fast() if args.fast else DemoSettings()
    overrides = {
        key: value
        for key in ("backbone", "epochs", "pretrain_epochs", "shots", "val_per_class", "test_per_class", "threads")
        if (value := getattr(args, key)) is not None
    }
    if args.seeds is not None:
        overrides["seeds"] = tuple(args.seeds)
    if "epochs" in overrides:  # keep the phases inside the run
        epochs = overrides["epochs"]
        overrides.setdefault("unfreeze_epoch", min(settings.unfreeze_epoch, max(0, epochs // 3)))
        first = min(settings.milestones[0], max(0, epochs // 4))
        second = max(first + 1, min(settings.milestones[1], epochs * 2 // 3))
        overrides.setdefault("milestones", (first, second))
        overrides.setdefault("probe_epochs", min(settings.probe_epochs, max(0, epochs // 3)))
        overrides.setdefault("gradual_start", min(settings.gradual_start, max(0, epochs // 4)))
        overrides.setdefault("gradual_every", max(1, min(settings.gradual_every, epochs // 6)))
    return replace(settings, **overrides)


def run_with_progress(settings: DemoSettings, output: Path, console: Console) -> DemoResult:
    columns = (
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=settings.total_epochs)

        def on_run(name: str) -> None:
            progress.update(task, description=name)
            if not console.is_terminal:  # no live bar in logs: one line per run instead
                done = int(progress.tasks[0].completed)
                console.print(f"[{done}/{settings.total_epochs} epochs] {name}")

        return run_demo(settings, output, on_run=on_run, on_epoch=lambda: progress.advance(task))


def demo_main(argv: list[str]) -> int:
    """Entry point of the ``demo`` subcommand; returns the exit status."""
    args = demo_parser().parse_args(argv)
    settings = settings_from(args)
    output: Path = args.output
    # Without a terminal rich assumes 80 columns, which wraps the table; give it room.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    errors = Console(stderr=True)
    result = run_with_progress(settings, output, errors)
    table = build_table(result)
    console.print(table)
    plot = save_plot(result, output / "val_accuracy.png")
    drift = save_drift_plot(result, output / "drift.png")
    (output / "table.txt").write_text(render_text(table))
    save_json(result, output / "results.json")
    console.print(
        f"Plots: {plot}, {drift}\nTable and per-run numbers: {output / 'table.txt'}, {output / 'results.json'}"
    )
    return 0
