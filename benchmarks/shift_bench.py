"""Which layers to tune under which shift: input-, feature- and output-level shifts, one pretrained backbone.

    python -m benchmarks.shift_bench --out results/          # 5 seeds, the full settings
    python -m benchmarks.shift_bench --out results/ --smoke  # 1 seed, a short pretraining and runs (CI)

The data (:mod:`benchmarks.shifts`) is scikit-learn's digits, made offline; the backbone is pretrained
once, as the demo's (:func:`finetune_strategies.demo.experiment.pretrain`), and every run of every seed
starts from it with the same head initialisation per seed. Each seed draws its own few labelled images per
class, validation images and test images, disjoint. Every method trains with the same optimizer, lr,
schedule and number of epochs; the validation split serves only choices (WiSE-FT's ``a``, the layer
chooser's probes); every reported accuracy is on a test set, which nothing else reads.

Rows: full fine-tuning, the head only (a linear probe), the first, middle and last third of the backbone's
layers with the head (the ``surgical`` preset; the thirds are those the layer chooser probes), Auto-RGN
(``layer_lr="auto_rgn"`` on full fine-tuning), the layer chooser's pick (``suggest_layers`` on the
seed's train and validation splits, within a stated step budget), LP-FT, WiSE-FT (on the full fine-tuning
run) and L2-SP. Columns: per shift, the test accuracy in distribution and out of distribution, mean ± std
over seeds, and the mean ± std of the per-seed difference to full fine-tuning.

Writes ``shift_bench.json`` and ``shift_bench.md`` to ``--out``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.shifts import SHIFTS, Shift, ShiftSplit, make_split
from benchmarks.transfer_quality import seeds_cli
from finetune_strategies import suggest_layers
from finetune_strategies.choose import layer_ranges
from finetune_strategies.demo.experiment import (
    DemoSettings,
    Pretrained,
    accuracy_on_test,
    demo_trainer,
    digits,
    pretrain,
    quiet,
)
from finetune_strategies.demo.report import mean_std
from finetune_strategies.image import ImageClassificationData, ImageClassifier
from finetune_strategies.image.weight_files import read_weights
from finetune_strategies.recipes.wise_ft import wise_ft
from finetune_strategies.strategies.registry import StrategySpec

FULL = "full fine-tuning"
PROBE = "head only (linear probe)"
THIRDS = ("first", "middle", "last")
AUTO_RGN = "Auto-RGN"
CHOOSER = "chooser's pick"
LP_FT = "LP-FT"
WISE_FT = "WiSE-FT"
L2_SP = "L2-SP"
ZERO_SHOT = "pretrained, not fine-tuned"
ROWS = (FULL, PROBE, *(f"{third} layers" for third in THIRDS), AUTO_RGN, CHOOSER, LP_FT, WISE_FT, L2_SP)
FROZEN_STAYS_FROZEN: dict[str, Any] = {"train_bn": False, "bn_eval": True}
"""The options of the rows that tune a subset: what is not tuned does not change, BatchNorm statistics included."""


@dataclass(frozen=True)
class ShiftSettings:
    """Sizes of the benchmark; :meth:`smoke` is the form CI runs."""

    pretraining: DemoSettings = field(default_factory=lambda: DemoSettings(pretrain_test_per_class=60))
    shots: int = 10
    val_per_class: int = 10
    test_per_class: int | None = 60
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 12
    batch_size: int = 10
    optimizer: str = "adam"
    lr: float = 1e-2
    scheduler: str | None = "cosine"
    probe_epochs: int = 6
    l2_sp: float = 0.01
    wise_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    chooser_steps_per_candidate: int = 20
    threads: int = 1

    @classmethod
    def smoke(cls, **overrides: Any) -> ShiftSettings:
        """One seed, a short pretraining and short runs: checks that everything runs, measures nothing."""
        values: dict[str, Any] = {
            "pretraining": DemoSettings.fast(pretrain_test_per_class=60),
            "seeds": (0,),
            "epochs": 2,
            "probe_epochs": 1,
            "shots": 4,
            "val_per_class": 4,
            "test_per_class": 20,
            "chooser_steps_per_candidate": 2,
            "wise_alphas": (0.0, 1.0),
        }
        values.update(overrides)
        return cls(**values)

    def steps_per_run(self, classes: int) -> int:
        return self.epochs * math.ceil(self.shots * classes / self.batch_size)


@dataclass
class Run:
    """One method on one shift and seed: test accuracy in and out of distribution."""

    method: str
    shift: Shift
    seed: int
    acc: float
    ood_acc: float
    seconds: float
    note: str = ""


def _model(
    split: ShiftSplit, pretrained: Pretrained, head: dict[str, torch.Tensor], settings: ShiftSettings, seed: int
) -> ImageClassifier:
    """The pretrained backbone and a head: ``head`` (the pretrained head's rows of the upright classes, when the
    labels are the pretraining classes), else a new head (the same per seed)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = ImageClassifier(
        num_classes=len(split.classes),
        backbone=settings.pretraining.backbone,
        pretrained=pretrained.backbone,
        labels=[str(c) for c in split.classes],
        optimizer=settings.optimizer,
        lr=settings.lr,
        scheduler=settings.scheduler,
    )
    if head:
        model.head.load_state_dict(head)
    return model


def _pretrained_head(split: ShiftSplit, pretrained: Pretrained, settings: ShiftSettings) -> dict[str, torch.Tensor]:
    if split.shift == "output":
        return {}
    rows = [settings.pretraining.pretrain_classes.index(c) * settings.pretraining.rotations for c in split.classes]
    return {name: value[rows] for name, value in read_weights(pretrained.head).items()}


def _data(
    split: ShiftSplit, settings: ShiftSettings, *, test: bool = True, ood: bool = False
) -> ImageClassificationData:
    """The data module of a split: train and validation, with the in- or out-of-distribution test set (or none)."""
    test_x, test_y = split.ood_test if ood else split.test
    return ImageClassificationData.from_arrays(
        *split.train,
        *split.val,
        test_x if test else None,
        test_y if test else None,
        labels=[str(c) for c in split.classes],
        batch_size=settings.batch_size,
        eval_batch_size=200,
        image_size=settings.pretraining.image_size,
        augment=False,
    )


def _strategies(ranges: Sequence[str]) -> dict[str, StrategySpec]:
    thirds = {
        f"{third} layers": {"strategy": "surgical", "layers": layers, **FROZEN_STAYS_FROZEN}
        for third, layers in zip(THIRDS, ranges, strict=True)
    }
    return {
        FULL: "no_freeze",
        PROBE: {"strategy": "freeze", **FROZEN_STAYS_FROZEN},
        **thirds,
        AUTO_RGN: {"strategy": "no_freeze", "layer_lr": "auto_rgn"},
    }


class Bench:
    """Runs the methods of one shift and seed."""

    def __init__(self, settings: ShiftSettings, pretrained: Pretrained, split: ShiftSplit, seed: int) -> None:
        self.settings, self.pretrained, self.split, self.seed = settings, pretrained, split, seed
        self.data = _data(split, settings)
        self.ood = _data(split, settings, ood=True)
        self.head = _pretrained_head(split, pretrained, settings)  # read once, for every run and WiSE-FT

    def model(self) -> ImageClassifier:
        return _model(self.split, self.pretrained, self.head, self.settings, self.seed)

    def evaluate(self, method: str, model: ImageClassifier, started: float, note: str = "") -> Run:
        acc, ood = accuracy_on_test(model, self.data), accuracy_on_test(model, self.ood)
        return Run(method, self.split.shift, self.seed, acc, ood, time.perf_counter() - started, note)

    def fit(self, method: str, strategy: StrategySpec, epochs: int | None = None, note: str = "") -> tuple[Run, Any]:
        started = time.perf_counter()
        model = self.model()
        trainer = demo_trainer(epochs or self.settings.epochs, [])
        trainer.finetune(model, self.data, strategy=strategy)
        return self.evaluate(method, model, started, note), (trainer, model)

    def wise_ft(self, trainer: pl.Trainer, model: ImageClassifier) -> Run:
        """WiSE-FT on the full fine-tuning run: ``a`` chosen on validation accuracy."""
        started = time.perf_counter()
        theta0 = {f"backbone.{k}": v for k, v in read_weights(self.pretrained.backbone).items()}
        theta0 |= {f"head.{k}": v for k, v in self.head.items()}
        chosen = wise_ft(trainer, model, theta0, self.settings.wise_alphas, datamodule=self.data, verbose=False)
        return self.evaluate(WISE_FT, model, started, f"a = {chosen.best:g}")

    def choose(self) -> tuple[StrategySpec, str, int]:
        """The layer chooser on this seed's train and validation splits only (a data module without a test set)."""
        model = self.model()
        candidates = 2 + len(THIRDS)
        budget = candidates * self.settings.chooser_steps_per_candidate
        with_no_test = _data(self.split, self.settings, test=False)
        suggestion = suggest_layers(
            model,
            with_no_test,
            budget_steps=budget,
            monitor="val_loss",  # the chooser's default: 50 validation images make accuracy ties common
            mode="min",
            options=FROZEN_STAYS_FROZEN,
            trainer_kwargs={"deterministic": True},
            seed=self.seed,
        )
        return suggestion.strategy, suggestion.choice, budget

    def run(self, ranges: Sequence[str], log: Callable[[str], None]) -> list[Run]:
        runs: list[Run] = []
        trainer: Any = None
        for method, strategy in _strategies(ranges).items():
            log(f"{self.split.shift} shift, seed {self.seed}: {method}")
            run, fitted = self.fit(method, strategy)
            runs.append(run)
            if method == FULL:
                trainer, full = fitted
        log(f"{self.split.shift} shift, seed {self.seed}: {WISE_FT}, {CHOOSER}, {LP_FT}, {L2_SP}")
        runs.append(self.wise_ft(trainer, full))
        started = time.perf_counter()
        spec, chosen, budget = self.choose()
        picked, _ = self.fit(CHOOSER, spec, note=f"{chosen} ({budget} probe steps)")
        picked.seconds = time.perf_counter() - started
        runs.append(picked)
        lp_ft = {"strategy": "lp_ft", "probe_epochs": self.settings.probe_epochs}
        runs.append(self.fit(LP_FT, lp_ft)[0])
        runs.append(self.fit(L2_SP, {"strategy": "no_freeze", "l2_sp": self.settings.l2_sp})[0])
        return runs

    def zero_shot(self) -> Run | None:
        """The pretrained model, not fine-tuned (only where its head knows the labels)."""
        if self.split.shift == "output":
            return None
        return self.evaluate(ZERO_SHOT, self.model(), time.perf_counter())


def run_shift_bench(out: Path, smoke: bool, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Pretrain once, run every method on every shift and seed, write ``shift_bench.json`` and ``.md``."""
    settings = ShiftSettings.smoke() if smoke else ShiftSettings()
    if seeds is not None:
        settings = replace(settings, seeds=tuple(seeds))
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    images, targets = digits()
    out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    splits: dict[str, dict[str, list[list[int]]]] = {}
    with quiet(settings.threads):
        log("pretraining")
        pretrained = pretrain(settings.pretraining, images, targets, out, lambda: None)
        ranges: list[str] = []
        for seed in settings.seeds:
            for shift in SHIFTS:
                split = make_split(
                    shift,
                    images,
                    targets,
                    seed=seed,
                    pretrain_classes=settings.pretraining.pretrain_classes,
                    new_classes=settings.pretraining.finetune_classes,
                    pretrain_seen=pretrained.indices,
                    pretrain_held=pretrained.test_indices,
                    shots=settings.shots,
                    val_per_class=settings.val_per_class,
                    test_per_class=settings.test_per_class,
                )
                splits.setdefault(str(seed), {})[shift] = list(split.indices)
                bench = Bench(settings, pretrained, split, seed)
                ranges = ranges or [f"{p[0]}:{p[-1] + 1}" for p in layer_ranges(bench.model()).values()]
                reference = bench.zero_shot()
                runs += [reference] if reference else []
                runs += bench.run(ranges, log)
    seconds = time.perf_counter() - started
    table = summarize(runs, settings.seeds)
    payload = {
        "smoke": smoke,
        "settings": _plain(asdict(settings)),
        "layer_ranges": ranges,
        "seconds": seconds,
        "pretraining": {"val_acc": pretrained.val_acc, "seconds": pretrained.seconds},
        "table": table,
        "runs": [asdict(run) for run in runs],
        "splits": splits,
    }
    (out / "shift_bench.json").write_text(json.dumps(payload, indent=2))
    (out / "shift_bench.md").write_text(markdown(table, settings, ranges, seconds, runs))
    return payload


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def summarize(runs: Sequence[Run], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Per method and shift: accuracy in and out of distribution over seeds, and the per-seed difference to
    full fine-tuning, as mean and std."""
    full = {(r.shift, r.seed): r for r in runs if r.method == FULL}
    order = {method: index for index, method in enumerate((ZERO_SHOT, *ROWS))}
    methods = sorted({r.method for r in runs}, key=order.__getitem__)
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for shift in SHIFTS:
            mine = [r for r in runs if r.method == method and r.shift == shift]
            if not mine:
                continue
            for key, values in (("acc", [r.acc for r in mine]), ("ood_acc", [r.ood_acc for r in mine])):
                diffs = [getattr(r, key) - getattr(full[(shift, r.seed)], key) for r in mine]
                row[f"{shift}.{key}"] = dict(zip(("mean", "std"), mean_std(values), strict=True))
                row[f"{shift}.{key}.diff"] = dict(zip(("mean", "std"), mean_std(diffs), strict=True))
                row[f"{shift}.{key}.per_seed"] = values
        rows.append(row)
    return rows


def _cell(value: dict[str, float] | None, sign: str = "") -> str:
    if value is None or math.isnan(value["mean"]):
        return "-"
    return f"{value['mean'] * 100:{sign}.1f} ± {value['std'] * 100:.1f}"


def markdown(
    table: Sequence[dict[str, Any]], settings: ShiftSettings, ranges: Sequence[str], seconds: float, runs: Sequence[Run]
) -> str:
    """Two tables (in distribution, out of distribution): accuracy and difference to full fine-tuning, in points."""
    lines = [
        f"Test accuracy (%) over {len(settings.seeds)} seed(s), mean ± std; Δ: the per-seed difference to full "
        "fine-tuning (points), mean ± std. Thirds of the backbone's layers: "
        + ", ".join(f"{third} = {r}" for third, r in zip(THIRDS, ranges, strict=True))
        + ".",
        "",
    ]
    for key, title in (("acc", "In distribution"), ("ood_acc", "Out of distribution")):
        lines += [f"**{title}**", "", "| method | " + " | ".join(f"{s} | Δ {s}" for s in SHIFTS) + " |"]
        lines.append("|---" * (1 + 2 * len(SHIFTS)) + "|")
        for row in table:
            cells = []
            for shift in SHIFTS:
                acc = row.get(f"{shift}.{key}")
                diff = None if row["method"] == FULL else row.get(f"{shift}.{key}.diff")
                cells += [_cell(acc), _cell(diff, "+")]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    picks = [f"{r.shift}, seed {r.seed}: {r.note}" for r in runs if r.method == CHOOSER]
    lines += ["The chooser's picks: " + "; ".join(picks) + ".", "", f"Wall time: {seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return seeds_cli(argv, __doc__, run_shift_bench, "shift_bench", "and .md")


if __name__ == "__main__":
    raise SystemExit(main())
