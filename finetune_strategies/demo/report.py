"""The demo's outputs: a rich table, a PNG plot of validation accuracy and a JSON dump."""

from __future__ import annotations

import io
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from finetune_strategies.demo.experiment import SCRATCH, DemoResult, RunResult


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1_000:
        return f"{n / 1_000:.1f}k"
    return str(n)


def phases(run: RunResult) -> list[tuple[int, int, int]]:
    """(first epoch, last epoch, trainable parameters) for each stretch of equal counts."""
    spans: list[tuple[int, int, int]] = []
    for epoch, count in enumerate(run.trainable):
        if spans and spans[-1][2] == count:
            spans[-1] = (spans[-1][0], epoch, count)
        else:
            spans.append((epoch, epoch, count))
    return spans


def _phase_text(run: RunResult) -> str:
    return "\n".join(f"ep {a}-{b}: {_count(n)}" if a != b else f"ep {a}: {_count(n)}" for a, b, n in phases(run))


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1%}" if values else "-"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def mean_curve(runs: list[RunResult]) -> list[float]:
    """Validation accuracy per epoch, averaged over the runs (seeds)."""
    return [statistics.mean(values) for values in zip(*(r.val_acc for r in runs), strict=False)]


def caption(result: DemoResult) -> str:
    s = result.settings
    seeds = len(s.seeds)
    pretrain = f"{min(s.pretrain_classes)}-{max(s.pretrain_classes)}"
    finetune = f"{min(s.finetune_classes)}-{max(s.finetune_classes)}"
    return (
        f"{s.backbone} pretrained from scratch on digits {pretrain} (val acc {result.pretrain_acc:.1%}, "
        f"{result.pretrain_seconds:.0f} s), then fine-tuned for {s.epochs} epochs on digits {finetune} with "
        f"{result.shots_per_class} images per class; validated on {result.val_size} held-out images; "
        + (f"mean ± std over {seeds} seeds (few-shot draws)." if seeds > 1 else "one seed.")
    )


def build_table(result: DemoResult) -> Table:
    """One row per strategy: schedule, accuracy, wall time and trainable parameters per phase."""
    table = Table(title="Few-shot fine-tuning on scikit-learn digits", caption=caption(result))
    table.add_column("Strategy", style="bold", no_wrap=True)
    table.add_column("Schedule")  # the only column that wraps on a narrow terminal
    table.add_column("Final val acc", justify="right", no_wrap=True)
    table.add_column("Best val acc", justify="right", no_wrap=True)
    table.add_column("Wall time / run", justify="right", no_wrap=True)
    table.add_column("Trainable params per phase", justify="right", no_wrap=True)
    for name, runs in result.by_strategy().items():
        if not runs:
            continue
        table.add_row(
            name,
            result.settings.schedule(name),
            _mean_std([r.val_acc[-1] for r in runs if r.val_acc]),
            _mean_std([max(r.val_acc) for r in runs if r.val_acc]),
            f"{statistics.mean(r.seconds for r in runs):.1f} s",
            _phase_text(runs[0]),
        )
    return table


def render_text(table: Table, width: int = 140) -> str:
    """The table as plain text, as a terminal of ``width`` columns shows it."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _shade(axis: Any, fractions: list[float]) -> None:
    for epoch, fraction in enumerate(fractions):
        if fraction < 1.0:
            alpha = 0.3 if fraction == 0.0 else 0.12
            axis.axvspan(epoch - 0.5, epoch + 0.5, color="tab:gray", alpha=alpha, linewidth=0)


def save_plot(result: DemoResult, path: Path) -> Path:
    """Validation accuracy per epoch, one panel per strategy, frozen epochs shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    grouped = {name: runs for name, runs in result.by_strategy().items() if runs}
    scratch = mean_curve(grouped.get(SCRATCH, []))
    rows = -(-(len(grouped) + 1) // 3)  # a panel per strategy and one for all of them, 3 a row
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.75 * rows), sharex=True, sharey=True, squeeze=False)
    flat = list(axes.flat)
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    for index, (name, runs) in enumerate(grouped.items()):
        axis, colour = flat[index], colours[index]
        curve = mean_curve(runs)
        epochs = list(range(len(curve)))
        _shade(axis, runs[0].backbone_trainable)
        if len(runs) > 1:
            spread = [statistics.stdev(v) for v in zip(*(r.val_acc for r in runs), strict=False)]
            low = [m - s for m, s in zip(curve, spread, strict=True)]
            high = [m + s for m, s in zip(curve, spread, strict=True)]
            axis.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        if name != SCRATCH and scratch:
            axis.plot(epochs[: len(scratch)], scratch, color="black", linestyle=":", label=SCRATCH)
        axis.plot(epochs, curve, color=colour, marker="o", markersize=3, label=name)
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
        flat[-1].plot(epochs, curve, color=colour, marker="o", markersize=3, label=name)
    for axis in flat[len(grouped) : -1]:
        axis.set_visible(False)
    flat[-1].set_title("all strategies (mean)")
    flat[-1].grid(alpha=0.3)
    flat[-1].legend(loc="lower right", fontsize=8)
    for axis in axes[-1]:
        axis.set_xlabel("epoch")
    for axis in axes[:, 0]:
        axis.set_ylabel("validation accuracy")
    fig.legend(
        handles=[
            Patch(color="tab:gray", alpha=0.3, label="backbone frozen"),
            Patch(color="tab:gray", alpha=0.12, label="backbone partly frozen"),
        ],
        loc="upper right",
        ncol=2,
    )
    fig.suptitle("Validation accuracy per epoch", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_json(result: DemoResult, path: Path) -> Path:
    """Every run's per-epoch numbers, for further analysis."""
    payload = {
        "settings": asdict(result.settings),
        "pretrain_acc": result.pretrain_acc,
        "pretrain_seconds": result.pretrain_seconds,
        "weights": str(result.weights),
        "shots_per_class": result.shots_per_class,
        "val_size": result.val_size,
        "runs": [{**asdict(run), "phases": phases(run)} for run in result.runs],
    }
    path.write_text(json.dumps(payload, indent=2))
    return path
