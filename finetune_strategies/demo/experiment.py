"""The demo experiment: pretrain on some digit classes, fine-tune few-shot on the others, report on a test split.

scikit-learn's handwritten digits (1797 images of 8x8 px, shipped with scikit-learn, so nothing is
downloaded) are split by class:

* **Pretraining.** A small timm backbone learns the first classes, each in four orientations (a
  20-class task: digit and rotation), on all their images but a held-out *pretraining test* set. The
  backbone is saved to a local ``.safetensors`` file, its head to another.
* **Fine-tuning.** For each seed, each class of the other classes is split into a few training images
  (the shots), a *validation* set and a *test* set (:func:`split_classes`). Every recipe loads the
  pretrained backbone through ``ImageClassifier(pretrained=<file>)`` and fine-tunes on the shots; one
  more run trains the same network from random weights. The validation set serves only choices
  (WiSE-FT's ``a``, plateau triggers and their restore-best): every reported accuracy comes from the
  test set, which nothing else reads.
* **Forgetting.** After each run, the fine-tuned backbone with the pretraining head is evaluated on
  the pretraining test set, next to the pretrained model's own accuracy there.

Each seed draws other splits; the results are averaged over seeds. The settings are the same for
every seed and were chosen on validation accuracy.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from finetune_strategies.errors import require
from finetune_strategies.image import ImageClassificationData, ImageClassifier
from finetune_strategies.image.weight_files import read_weights, save_weights
from finetune_strategies.recipes.drift import DriftMonitor
from finetune_strategies.recipes.monitor import TrainableMonitor
from finetune_strategies.recipes.wise_ft import wise_ft
from finetune_strategies.strategies.registry import StrategySpec
from finetune_strategies.trainer import Trainer

# The [demo] extra, imported with the demo so that a missing part fails before anything trains.
sklearn_datasets = require("sklearn.datasets", "demo", what="The demo", package="scikit-learn")
require("matplotlib", "demo", what="The demo")  # its plots

# Digits must not be flipped: mild crops only.
AUGMENT: dict[str, Any] = {"hflip": 0.0, "scale": (0.6, 1.0), "ratio": (0.8, 1.25), "color_jitter": 0.0}
SCRATCH = "from scratch"
WISE = " + WiSE-FT"


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning run per seed: its name, strategy, whether it starts pretrained, what the table
    says about it, and whether WiSE-FT is applied after it (reported as a second row)."""

    name: str
    strategy: StrategySpec
    schedule: str
    pretrained: bool = True
    wise_ft: bool = False
    epochs: int | None = None  # None: the settings' epochs


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. :meth:`fast` is the quick form used by tests and CI."""

    backbone: str = "test_resnet"
    image_size: int = 32
    pretrain_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    rotations: int = 4
    pretrain_epochs: int = 16
    pretrain_test_per_class: int = 40
    epochs: int = 12
    scratch_long: int = 4  # the second from-scratch row trains this many times longer (1: no such row)
    shots: int = 3
    val_per_class: int = 20
    test_per_class: int | None = None  # None: every image not drawn as a shot or for validation
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_size: int = 32
    finetune_batch_size: int = 5
    pretrain_lr: float = 3e-3
    lr: float = 1e-2
    scheduler: str | None = "cosine"
    unfreeze_epoch: int = 4
    milestones: tuple[int, int] = (3, 7)
    milestone_blocks: int = 2
    probe_epochs: int = 4
    l2_sp: float = 0.01
    gradual_start: int = 2
    gradual_every: int = 2
    layer_lr_decay: float = 0.5
    wise_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    threads: int = 1

    @classmethod
    def fast(cls, **overrides: Any) -> DemoSettings:
        """A reduced demo (one seed, fewer epochs and test images) for tests and CI."""
        values: dict[str, Any] = {
            "pretrain_epochs": 3,
            "epochs": 6,
            "scratch_long": 2,
            "test_per_class": 40,
            "seeds": (0,),
            "unfreeze_epoch": 2,
            "milestones": (2, 4),
            "probe_epochs": 2,
            "gradual_start": 1,
            "gradual_every": 1,
        }
        values.update(overrides)
        return cls(**values)

    def recipes(self) -> list[Recipe]:
        """Every fine-tuning run of a seed, in the table's order."""
        unfreeze = {"strategy": "freeze_unfreeze", "unfreeze_epoch": self.unfreeze_epoch}
        milestones = {
            "strategy": "unfreeze_milestones",
            "milestones": self.milestones,
            "num_layers": self.milestone_blocks,
            "layer_unit": "blocks",
        }
        gradual = {
            "strategy": "gradual_unfreeze",
            "start_epoch": self.gradual_start,
            "every": self.gradual_every,
            "layer_lr_decay": self.layer_lr_decay,
        }
        long = self.epochs * self.scratch_long
        longer = [
            Recipe(f"{SCRATCH}, {long} epochs", "no_freeze", "as from scratch, trained longer", False, epochs=long)
        ]
        return [
            Recipe(SCRATCH, "no_freeze", "random init, everything trains", pretrained=False),
            *(longer if self.scratch_long > 1 else []),
            Recipe("no_freeze", "no_freeze", "everything trains from epoch 0"),
            Recipe("freeze", "freeze", "backbone frozen throughout"),
            Recipe("freeze_unfreeze", unfreeze, f"backbone unfrozen at epoch {self.unfreeze_epoch}", wise_ft=True),
            Recipe(
                "unfreeze_milestones",
                milestones,
                f"last {self.milestone_blocks} blocks at epoch {self.milestones[0]}, the rest at {self.milestones[1]}",
            ),
            Recipe(
                "lp_ft",
                {"strategy": "lp_ft", "probe_epochs": self.probe_epochs},
                f"linear probe (features cached), all at lr / 10 from epoch {self.probe_epochs}",
            ),
            Recipe(
                "freeze_unfreeze + l2_sp",
                {**unfreeze, "l2_sp": self.l2_sp},
                f"as freeze_unfreeze, pulled toward the pretrained weights (alpha {self.l2_sp:g})",
            ),
            Recipe(
                "gradual_unfreeze",
                gradual,
                f"one more block every {self.gradual_every} epochs from epoch {self.gradual_start}, "
                f"layer_lr_decay {self.layer_lr_decay:g}",
            ),
        ]

    def row_names(self) -> list[str]:
        """The table's rows: every recipe, and after a WiSE-FT one its interpolated row."""
        return [name for r in self.recipes() for name in ([r.name, r.name + WISE] if r.wise_ft else [r.name])]

    def schedule(self, name: str) -> str:
        """A short description of a row's schedule, for the table."""
        for recipe in self.recipes():
            if name == recipe.name:
                return recipe.schedule
            if name == recipe.name + WISE:
                return f"the {recipe.name} run, interpolated with the pretrained backbone (a chosen on validation)"
        raise KeyError(name)

    @property
    def total_epochs(self) -> int:
        """Epochs over the whole demo, for a progress bar."""
        return self.pretrain_epochs + sum(r.epochs or self.epochs for r in self.recipes()) * len(self.seeds)


class Split(NamedTuple):
    """Indices into the digits of one seed's fine-tuning images: training shots, validation and test."""

    train: list[int]
    val: list[int]
    test: list[int]


@dataclass
class RunResult:
    """One row's run for one seed: per-epoch validation accuracy and trainable counts, and the test
    accuracy, forgetting and drift at the end."""

    name: str
    seed: int
    val_acc: list[float] = field(default_factory=list)
    trainable: list[int] = field(default_factory=list)  # trainable parameters at each epoch
    backbone_trainable: list[float] = field(default_factory=list)  # fraction, BatchNorm aside
    test_acc: float = float("nan")
    pretrain_task_acc: float | None = None  # backbone + pretraining head on the pretraining test set
    drift: list[dict[str, float]] = field(default_factory=list)  # per epoch, per layer
    wise_alpha: float | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class DemoResult:
    """The whole demo: the pretraining, every run, the splits and the time it took."""

    settings: DemoSettings
    pretrain_val_acc: float
    pretrain_test_acc: float  # the pretrained model on the pretraining test set: forgetting's reference
    pretrain_seconds: float
    runs: list[RunResult]
    weights: Path
    splits: dict[int, Split]
    pretrain_indices: list[int]
    pretrain_test_indices: list[int]
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def by_strategy(self) -> dict[str, list[RunResult]]:
        """The runs grouped by row, in the table's order."""
        grouped: dict[str, list[RunResult]] = {name: [] for name in self.settings.row_names()}
        for run in self.runs:
            grouped[run.name].append(run)
        return grouped

    @property
    def val_size(self) -> int:
        return len(next(iter(self.splits.values())).val) if self.splits else 0

    @property
    def test_size(self) -> int:
        return len(next(iter(self.splits.values())).test) if self.splits else 0


class _EpochRecorder(TrainableMonitor):
    """Records what trains (BatchNorm aside in the backbone's fraction) and the validation accuracy
    per epoch, and reports progress."""

    def __init__(self, advance: Callable[[], None]) -> None:
        super().__init__(log=False, skip_batchnorm=True)
        self.advance = advance
        self.val_acc: list[float] = []

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.val_acc.append(float(trainer.callback_metrics["val_acc"]))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.advance()

    def result(self, name: str, seed: int) -> RunResult:
        """The run's per-epoch record."""
        return RunResult(
            name,
            seed,
            val_acc=list(self.val_acc),
            trainable=[r.trainable_params for r in self.records],
            backbone_trainable=[r.trainable_fractions.get("backbone", 0.0) for r in self.records],
        )


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (0..255) and their classes."""
    data = sklearn_datasets.load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    return images, data.target.astype(int)


def split_classes(
    targets: np.ndarray, classes: tuple[int, ...], counts: tuple[int | None, ...], rng: np.random.Generator
) -> list[list[int]]:
    """Shuffle each class's images and cut them into consecutive parts of ``counts`` images per class
    (``None``: all that are left); the parts are disjoint by construction."""
    parts: list[list[int]] = [[] for _ in counts]
    for cls in classes:
        indices = [int(i) for i in np.flatnonzero(targets == cls)]
        rng.shuffle(indices)
        start = 0
        for part, count in zip(parts, counts, strict=True):
            end = len(indices) if count is None else min(start + count, len(indices))
            part.extend(indices[start:end])
            start = end
    return parts


def finetune_split(settings: DemoSettings, targets: np.ndarray, seed: int) -> Split:
    """The seed's shots, validation and test images of the fine-tuning classes."""
    counts = (settings.shots, settings.val_per_class, settings.test_per_class)
    train, val, test = split_classes(targets, settings.finetune_classes, counts, np.random.default_rng(1000 + seed))
    return Split(train, val, test)


@contextmanager
def quiet(threads: int) -> Iterator[None]:
    """Silence Lightning's info logs and the warnings tiny runs trigger; use ``threads`` CPU threads.

    Tiny models run fastest on one thread; more threads mostly contend with each other.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels, old_threads = [lg.level for lg in loggers], torch.get_num_threads()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        for message in ("does not have many workers", "LeafSpec", "smaller than the logging interval"):
            warnings.filterwarnings("ignore", message=f".*{message}.*")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            torch.set_num_threads(old_threads)


def demo_trainer(epochs: int, callbacks: list[pl.Callback]) -> Trainer:
    """The demo's trainer: CPU, one device, deterministic, no logger, checkpoints or progress bar."""
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=callbacks,
    )


class Pretrained(NamedTuple):
    """The pretraining's outputs: the weight files, its validation accuracy and time, its test set, and which
    images of the pretraining classes it trained on and held out."""

    backbone: Path
    head: Path
    val_acc: float
    seconds: float
    data: ImageClassificationData  # the pretraining test set, for forgetting
    indices: list[int]
    test_indices: list[int]


def _rotated(images: np.ndarray, targets: np.ndarray, indices: list[int], settings: DemoSettings) -> tuple[Any, Any]:
    """The images in every orientation, labelled ``class * rotations + quarter turns``."""
    turns = range(settings.rotations)
    pixels = np.concatenate([np.rot90(images[indices], k, axes=(1, 2)) for k in turns])
    labels = [settings.pretrain_classes.index(int(t)) * settings.rotations + k for k in turns for t in targets[indices]]
    return np.ascontiguousarray(pixels), labels


def pretrain(
    settings: DemoSettings, images: np.ndarray, targets: np.ndarray, output: Path, advance: Callable[[], None]
) -> Pretrained:
    """Train the backbone on ``settings.pretrain_classes`` in every orientation and save it and its head to
    ``output`` (``advance`` is called after every epoch)."""
    pl.seed_everything(settings.seeds[0], workers=True, verbose=False)  # before the model is built
    rng = np.random.default_rng(settings.seeds[0])
    held, chosen = split_classes(targets, settings.pretrain_classes, (settings.pretrain_test_per_class, None), rng)
    train_x, train_y = _rotated(images, targets, chosen, settings)
    test_x, test_y = _rotated(images, targets, held, settings)
    num_classes = len(settings.pretrain_classes) * settings.rotations
    common: dict[str, Any] = {
        "labels": [str(i) for i in range(num_classes)],
        "batch_size": settings.batch_size,
        "eval_batch_size": 200,
        "image_size": settings.image_size,
    }
    data = ImageClassificationData.from_arrays(
        train_x, train_y, val_split=0.1, seed=settings.seeds[0], transform_kwargs=AUGMENT, **common
    )
    model = ImageClassifier(
        num_classes=num_classes,
        backbone=settings.backbone,
        pretrained=False,
        optimizer="adamw",
        lr=settings.pretrain_lr,
        scheduler="cosine",
    )
    recorder = _EpochRecorder(advance)
    start = time.perf_counter()
    demo_trainer(settings.pretrain_epochs, [recorder]).fit(model, data)
    seconds = time.perf_counter() - start
    classes = "".join(map(str, settings.pretrain_classes))
    stem = output / f"{settings.backbone}_digits_{classes}_x{settings.rotations}"
    backbone = save_weights(model.backbone, stem.with_suffix(".safetensors"))
    head = save_weights(model.head, stem.with_name(stem.name + "_head.safetensors"))
    test = ImageClassificationData.from_arrays(train_x, train_y, test_data=test_x, test_targets=test_y, **common)
    return Pretrained(backbone, head, (recorder.val_acc or [float("nan")])[-1], seconds, test, chosen, held)


class _Forgetting:
    """The pretrained network (backbone and pretraining head), evaluated on the pretraining test set
    with a fine-tuned backbone put in."""

    def __init__(self, settings: DemoSettings, pretrained: Pretrained) -> None:
        self.model = ImageClassifier(
            num_classes=len(settings.pretrain_classes) * settings.rotations,
            backbone=settings.backbone,
            pretrained=pretrained.backbone,
        )
        self.model.head.load_state_dict(read_weights(pretrained.head))
        self.reference = {k: v.clone() for k, v in self.model.backbone.state_dict().items()}
        self.data = pretrained.data

    def accuracy(self, backbone: torch.nn.Module | None = None) -> float:
        """Accuracy on the pretraining task with ``backbone``'s weights (None: the pretrained ones)."""
        self.model.backbone.load_state_dict(self.reference if backbone is None else backbone.state_dict())
        return accuracy_on_test(self.model, self.data)


def accuracy_on_test(model: ImageClassifier, data: ImageClassificationData) -> float:
    """``model``'s accuracy on ``data``'s test split."""
    return float(demo_trainer(1, []).test(model, data, verbose=False)[0]["test_acc"])


def _run(
    recipe: Recipe,
    seed: int,
    data: ImageClassificationData,
    labels: list[str],
    settings: DemoSettings,
    pretrained: Pretrained,
    forgetting: _Forgetting,
    advance: Callable[[], None],
) -> list[RunResult]:
    """Fine-tune with one recipe; the test accuracy and forgetting after it (and after WiSE-FT)."""
    pl.seed_everything(seed, workers=True, verbose=False)  # same head init for every recipe
    model = ImageClassifier(
        num_classes=len(labels),
        backbone=settings.backbone,
        pretrained=pretrained.backbone if recipe.pretrained else False,
        labels=labels,
        lr=settings.lr,
        scheduler=settings.scheduler,
    )
    recorder = _EpochRecorder(advance)
    drift = DriftMonitor(log=False)
    trainer = demo_trainer(recipe.epochs or settings.epochs, [recorder, drift])
    start, cpu = time.perf_counter(), time.process_time()
    trainer.finetune(model, data, strategy=recipe.strategy)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    run = recorder.result(recipe.name, seed)
    run.seconds, run.cpu_seconds = seconds, cpu_seconds
    run.drift = drift.history if recipe.pretrained else []
    run.test_acc = accuracy_on_test(model, data)
    run.pretrain_task_acc = forgetting.accuracy(model.plain_backbone()) if recipe.pretrained else None
    if not recipe.wise_ft:
        return [run]
    theta0 = {f"backbone.{name}": value for name, value in read_weights(pretrained.backbone).items()}
    chosen = wise_ft(trainer, model, theta0, settings.wise_alphas, monitor="val_acc", datamodule=data, verbose=False)
    interpolated = RunResult(
        recipe.name + WISE,
        seed,
        val_acc=run.val_acc,
        trainable=run.trainable,
        backbone_trainable=run.backbone_trainable,
        test_acc=accuracy_on_test(model, data),
        pretrain_task_acc=forgetting.accuracy(model.backbone),
        wise_alpha=chosen.best,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )
    return [run, interpolated]


def finetune_data(
    images: np.ndarray, targets: np.ndarray, split: Split, settings: DemoSettings
) -> ImageClassificationData:
    """The data module of one seed: the shots to train on, the validation images for choices and the
    test images for the report."""

    def encode(indices: list[int]) -> list[int]:
        return [settings.finetune_classes.index(int(t)) for t in targets[indices]]

    return ImageClassificationData.from_arrays(
        images[split.train],
        encode(split.train),
        images[split.val],
        encode(split.val),
        images[split.test],
        encode(split.test),
        labels=[str(c) for c in settings.finetune_classes],
        batch_size=settings.finetune_batch_size,
        eval_batch_size=200,
        image_size=settings.image_size,
        augment=False,
    )


def run_demo(
    settings: DemoSettings,
    output: Path,
    on_run: Callable[[str], None] = lambda name: None,
    on_epoch: Callable[[], None] = lambda: None,
) -> DemoResult:
    """Pretrain, then fine-tune with every recipe and seed; ``on_run`` / ``on_epoch`` report progress."""
    images, targets = digits()
    output.mkdir(parents=True, exist_ok=True)
    labels = [str(c) for c in settings.finetune_classes]
    runs: list[RunResult] = []
    splits: dict[int, Split] = {}
    start, cpu = time.perf_counter(), time.process_time()
    with quiet(settings.threads):
        on_run("pretraining")
        pretrained = pretrain(settings, images, targets, output, on_epoch)
        forgetting = _Forgetting(settings, pretrained)
        reference = forgetting.accuracy()
        for seed in settings.seeds:
            splits[seed] = finetune_split(settings, targets, seed)
            data = finetune_data(images, targets, splits[seed], settings)
            for recipe in settings.recipes():
                on_run(f"{recipe.name} (seed {seed})")
                runs.extend(_run(recipe, seed, data, labels, settings, pretrained, forgetting, on_epoch))
    return DemoResult(
        settings,
        pretrained.val_acc,
        reference,
        pretrained.seconds,
        runs,
        pretrained.backbone,
        splits,
        pretrained.indices,
        pretrained.test_indices,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
    )
