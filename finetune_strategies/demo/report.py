"""The demo's outputs: a rich table, plots of validation accuracy and of drift per layer, a JSON dump."""

from __future__ import annotations

import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from finetune_strategies.demo.experiment import SCRATCH, WISE, DemoResult, RunResult
from finetune_strategies.recipes.drift import plot_drift


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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _percent(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.1%} ± {std:.1%}" if len(values) > 1 else f"{mean:.1%}"


def mean_curve(runs: list[RunResult]) -> list[float]:
    """Validation accuracy per epoch, averaged over the runs (seeds)."""
    return [statistics.fmean(values) for values in zip(*(r.val_acc for r in runs), strict=False)]


def best_scratch(result: DemoResult) -> str:
    """The from-scratch row with the highest mean test accuracy: the baseline every gain is measured from."""
    rows = {name: runs for name, runs in result.by_strategy().items() if runs and name.startswith(SCRATCH)}
    return max(rows, key=lambda name: mean_std([r.test_acc for r in rows[name]])[0])


def summary(result: DemoResult) -> list[dict[str, Any]]:
    """Per row: test accuracy, its gain over the best from-scratch row (paired by seed), forgetting, the
    chosen WiSE-FT ``a`` and time, each over the seeds (mean, std)."""
    grouped = {name: runs for name, runs in result.by_strategy().items() if runs}
    baseline = best_scratch(result)
    scratch = {r.seed: r.test_acc for r in grouped[baseline]}
    rows = []
    for name, runs in grouped.items():
        kept = [r.pretrain_task_acc for r in runs if r.pretrain_task_acc is not None]
        gains = [r.test_acc - scratch[r.seed] for r in runs if r.seed in scratch]
        rows.append(
            {
                "name": name,
                "schedule": result.settings.schedule(name),
                "seeds": [r.seed for r in runs],
                "test_acc": mean_std([r.test_acc for r in runs]),
                "gain_over_scratch": mean_std(gains) if not name.startswith(SCRATCH) else (math.nan, math.nan),
                "final_val_acc": mean_std([r.val_acc[-1] for r in runs if r.val_acc]),
                "pretrain_task_acc": mean_std(kept),
                "wise_alpha": [r.wise_alpha for r in runs if r.wise_alpha is not None],
                "seconds": mean_std([r.seconds for r in runs]),
                "cpu_seconds": mean_std([r.cpu_seconds for r in runs]),
            }
        )
    return rows


def caption(result: DemoResult) -> str:
    s = result.settings
    seeds = len(s.seeds)
    pretrain = f"{min(s.pretrain_classes)}-{max(s.pretrain_classes)}"
    finetune = f"{min(s.finetune_classes)}-{max(s.finetune_classes)}"
    return (
        f"{s.backbone} pretrained on digits {pretrain} in {s.rotations} orientations ({result.pretrain_seconds:.0f} s; "
        f"pretraining-task accuracy {result.pretrain_test_acc:.1%} on "
        f"{len(result.pretrain_test_indices) * s.rotations} held-out images), then fine-tuned for {s.epochs} epochs "
        f"on digits {finetune} with {s.shots} images per "
        f"class. Test accuracy on {result.test_size} test images; {result.val_size} validation images serve only "
        f"choices (WiSE-FT's a). 'vs scratch': test accuracy minus {best_scratch(result)!r}'s, per seed. "
        "Pretraining task: its accuracy with the fine-tuned backbone (forgetting). "
        + (f"Mean ± std over {seeds} seeds (splits). " if seeds > 1 else "One seed. ")
        + f"Whole demo: {result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU."
    )


def build_table(result: DemoResult) -> Table:
    """One row per recipe: schedule, test accuracy and gain over from-scratch, forgetting, time, phases."""
    table = Table(title="Few-shot fine-tuning on scikit-learn digits", caption=caption(result))
    table.add_column("Recipe", style="bold", no_wrap=True)
    table.add_column("Schedule")  # the only column that wraps on a narrow terminal
    table.add_column("Test acc", justify="right", no_wrap=True)
    table.add_column("vs scratch\n(points)", justify="right", no_wrap=True)
    table.add_column(f"Pretraining task\n(before: {result.pretrain_test_acc:.1%})", justify="right", no_wrap=True)
    table.add_column("Time / run\n(wall, CPU)", justify="right", no_wrap=True)
    table.add_column("Trainable params\nper phase", justify="right", no_wrap=True)
    grouped = result.by_strategy()
    for row in summary(result):
        runs = grouped[row["name"]]
        gain, spread = row["gain_over_scratch"]
        name = row["name"]
        if row["wise_alpha"]:
            name += "\n(a: " + ", ".join(f"{a:g}" for a in row["wise_alpha"]) + ")"
        table.add_row(
            name,
            row["schedule"],
            _percent([r.test_acc for r in runs]),
            "-" if math.isnan(gain) else f"{100 * gain:+.1f} ± {100 * spread:.1f}",
            _percent([r.pretrain_task_acc for r in runs if r.pretrain_task_acc is not None]),
            f"{row['seconds'][0]:.1f} s, {row['cpu_seconds'][0]:.1f} s",
            "(same run)" if row["name"].endswith(WISE) else _phase_text(runs[0]),
        )
    return table


def render_text(table: Table, width: int = 160) -> str:
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
    """Validation accuracy per epoch, one panel per recipe, frozen epochs shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    grouped = {name: runs for name, runs in result.by_strategy().items() if runs and not name.endswith(WISE)}
    grouped = {name: runs for name, runs in grouped.items() if name == SCRATCH or not name.startswith(SCRATCH)}
    scratch = mean_curve(grouped.get(SCRATCH, []))
    columns = 3
    rows = -(-(len(grouped) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.4 * rows + 0.6), sharex=True, sharey=True, squeeze=False)
    flat = list(axes.flat)
    for index, (name, runs) in enumerate(grouped.items()):
        axis, colour = flat[index], plt.get_cmap("tab10")(index % 10)
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
        flat[len(grouped)].plot(epochs, curve, color=colour, marker="o", markersize=3, label=name)
    flat[len(grouped)].set_title("all recipes (mean)")
    flat[len(grouped)].grid(alpha=0.3)
    flat[len(grouped)].legend(loc="lower right", fontsize=7)
    for axis in flat[len(grouped) + 1 :]:
        axis.set_visible(False)
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
    fig.suptitle("Validation accuracy per epoch (the table reports the test split)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mean_drift(runs: list[RunResult]) -> list[dict[str, float]]:
    """Drift per epoch and layer, averaged over the runs (seeds)."""
    histories = [r.drift for r in runs if r.drift]
    return [
        {layer: statistics.fmean(h[epoch][layer] for h in histories) for layer in histories[0][epoch]}
        for epoch in range(min((len(h) for h in histories), default=0))
    ]


def save_drift_plot(result: DemoResult, path: Path) -> Path:
    """Each pretrained recipe's drift per layer from the pretrained weights (mean over seeds)."""
    grouped = result.by_strategy()
    histories = {name: mean_drift(runs) for name, runs in grouped.items() if not name.endswith(WISE)}
    title = "Drift from the pretrained weights, ||w - w0|| / ||w0|| (mean over seeds)"
    return plot_drift({name: h for name, h in histories.items() if h}, path, title=title)


def save_json(result: DemoResult, path: Path) -> Path:
    """Every run's numbers and the splits, for further analysis."""
    payload = {
        "settings": asdict(result.settings),
        "pretrain_val_acc": result.pretrain_val_acc,
        "pretrain_test_acc": result.pretrain_test_acc,
        "pretrain_seconds": result.pretrain_seconds,
        "seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "weights": str(result.weights),
        "splits": {str(seed): split._asdict() for seed, split in result.splits.items()},
        "summary": summary(result),
        "runs": [{**asdict(run), "phases": phases(run)} for run in result.runs],
    }
    path.write_text(json.dumps(payload, indent=2))
    return path
