"""The demo experiment: pretrain on some digit classes, fine-tune few-shot on the others.

scikit-learn's handwritten digits (1797 images of 8x8 px, shipped with scikit-learn, so nothing is
downloaded) are split by class. A small timm backbone is pretrained on the first classes and saved
to a local ``.safetensors`` file. Each built-in strategy then fine-tunes it, loaded through
``ImageClassifier(pretrained=<file>)``, on a few images per class of the other classes, and one
more run trains the same architecture from scratch. Every run is validated after each epoch on
held-out images of those classes. Each seed draws other few-shot images, so the results are
averaged over episodes.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import load_digits

from finetune_strategies.image import ImageClassificationData, ImageClassifier
from finetune_strategies.monitor import TrainableMonitor
from finetune_strategies.registry import StrategySpec
from finetune_strategies.trainer import Trainer

# Digits must not be flipped: mild crops only.
AUGMENT: dict[str, Any] = {"hflip": 0.0, "scale": (0.6, 1.0), "ratio": (0.8, 1.25), "color_jitter": 0.0}
SCRATCH = "from scratch"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. :meth:`fast` is the quick form used by tests and CI."""

    backbone: str = "test_resnet"
    image_size: int = 32
    pretrain_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    pretrain_epochs: int = 10
    epochs: int = 12
    shots: int = 3
    val_per_class: int | None = None  # None: every image not drawn as a shot
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_size: int = 32
    finetune_batch_size: int = 5
    pretrain_lr: float = 3e-3
    lr: float = 1e-2
    scheduler: str | None = "cosine"
    unfreeze_epoch: int = 4
    milestones: tuple[int, int] = (3, 7)
    milestone_blocks: int = 2
    threads: int = 1

    @classmethod
    def fast(cls, **overrides: Any) -> DemoSettings:
        """A reduced demo (one seed, fewer epochs and validation images) for tests and CI."""
        values: dict[str, Any] = {
            "pretrain_epochs": 4,
            "epochs": 6,
            "val_per_class": 30,
            "seeds": (0,),
            "unfreeze_epoch": 2,
            "milestones": (2, 4),
        }
        values.update(overrides)
        return cls(**values)

    def strategies(self) -> list[tuple[str, StrategySpec, bool]]:
        """(run name, strategy spec, start from the pretrained backbone) for every run."""
        milestones = {
            "strategy": "unfreeze_milestones",
            "milestones": self.milestones,
            "num_layers": self.milestone_blocks,
            "layer_unit": "blocks",
        }
        return [
            ("no_freeze", "no_freeze", True),
            ("freeze", "freeze", True),
            ("freeze_unfreeze", ("freeze_unfreeze", self.unfreeze_epoch), True),
            ("unfreeze_milestones", milestones, True),
            (SCRATCH, "no_freeze", False),
        ]

    def schedule(self, name: str) -> str:
        """A short description of a run's schedule, for the table."""
        return {
            "no_freeze": "everything trains from epoch 0",
            "freeze": "backbone frozen throughout",
            "freeze_unfreeze": f"backbone unfrozen at epoch {self.unfreeze_epoch}",
            "unfreeze_milestones": (
                f"last {self.milestone_blocks} blocks at epoch {self.milestones[0]}, the rest at {self.milestones[1]}"
            ),
            SCRATCH: "random init, everything trains",
        }[name]

    @property
    def total_epochs(self) -> int:
        """Epochs over the whole demo, for a progress bar."""
        return self.pretrain_epochs + self.epochs * len(self.strategies()) * len(self.seeds)


@dataclass
class RunResult:
    """One fine-tuning run (a strategy and a seed), per epoch."""

    name: str
    seed: int
    val_acc: list[float] = field(default_factory=list)
    trainable: list[int] = field(default_factory=list)  # trainable parameters at each epoch
    backbone_trainable: list[float] = field(default_factory=list)  # fraction, BatchNorm aside
    seconds: float = 0.0


@dataclass
class DemoResult:
    """The whole demo: the pretraining, every run, and the data sizes."""

    settings: DemoSettings
    pretrain_acc: float
    pretrain_seconds: float
    runs: list[RunResult]
    weights: Path
    shots_per_class: int
    val_size: int

    def by_strategy(self) -> dict[str, list[RunResult]]:
        """The runs grouped by strategy, in the settings' order."""
        grouped: dict[str, list[RunResult]] = {name: [] for name, _, _ in self.settings.strategies()}
        for run in self.runs:
            grouped[run.name].append(run)
        return grouped


class _EpochRecorder(TrainableMonitor):
    """Records what trains (BatchNorm aside in the backbone's fraction) and the validation accuracy
    per epoch, and reports progress."""

    def __init__(self, advance: Callable[[], None]) -> None:
        super().__init__(log=False, skip_batchnorm=True)
        self.advance = advance
        self.val_acc: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_acc.append(float(trainer.callback_metrics["val_acc"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.advance()

    def result(self, name: str, seed: int, seconds: float) -> RunResult:
        """The run's per-epoch record."""
        return RunResult(
            name,
            seed,
            val_acc=list(self.val_acc),
            trainable=[r.trainable_params for r in self.records],
            backbone_trainable=[r.trainable_fractions.get("backbone", 0.0) for r in self.records],
            seconds=seconds,
        )


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (0..255) and their classes."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    return images, data.target.astype(int)


def _draw(
    targets: np.ndarray,
    classes: tuple[int, ...],
    count: int | None,
    rng: np.random.Generator,
    exclude: frozenset[int] = frozenset(),
) -> list[int]:
    chosen: list[int] = []
    for cls in classes:
        indices = [int(i) for i in np.flatnonzero(targets == cls) if int(i) not in exclude]
        rng.shuffle(indices)
        chosen.extend(indices if count is None else indices[:count])
    return chosen


@contextmanager
def quiet(threads: int) -> Iterator[None]:
    """Silence Lightning's info logs and the warnings tiny runs trigger; use ``threads`` CPU threads.

    Tiny models run fastest on one thread; more threads mostly contend with each other.
    """
    logger = logging.getLogger("lightning.pytorch")
    level, old_threads = logger.level, torch.get_num_threads()
    logger.setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        for message in ("does not have many workers", "LeafSpec", "smaller than the logging interval"):
            warnings.filterwarnings("ignore", message=f".*{message}.*")
        try:
            yield
        finally:
            logger.setLevel(level)
            torch.set_num_threads(old_threads)


def _trainer(epochs: int, recorder: _EpochRecorder) -> Trainer:
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
        callbacks=[recorder],
    )


def _pretrain(
    settings: DemoSettings,
    images: np.ndarray,
    targets: np.ndarray,
    weights: Path,
    advance: Callable[[], None],
) -> tuple[float, float]:
    pl.seed_everything(settings.seeds[0], workers=True, verbose=False)  # before the model is built
    rng = np.random.default_rng(settings.seeds[0])
    chosen = _draw(targets, settings.pretrain_classes, None, rng)
    data = ImageClassificationData.from_arrays(
        images[chosen],
        [settings.pretrain_classes.index(int(t)) for t in targets[chosen]],
        val_split=0.1,
        batch_size=settings.batch_size,
        eval_batch_size=100,
        seed=settings.seeds[0],
        image_size=settings.image_size,
        transform_kwargs=AUGMENT,
    )
    model = ImageClassifier(
        num_classes=len(settings.pretrain_classes),
        backbone=settings.backbone,
        pretrained=False,
        optimizer="adamw",
        lr=settings.pretrain_lr,
        scheduler="cosine",
    )
    recorder = _EpochRecorder(advance)
    start = time.perf_counter()
    _trainer(settings.pretrain_epochs, recorder).fit(model, data)
    seconds = time.perf_counter() - start
    model.save_backbone(weights)
    return (recorder.val_acc or [float("nan")])[-1], seconds


def run_demo(
    settings: DemoSettings,
    output: Path,
    on_run: Callable[[str], None] = lambda name: None,
    on_epoch: Callable[[], None] = lambda: None,
) -> DemoResult:
    """Pretrain, then fine-tune with every strategy and seed; ``on_run`` / ``on_epoch`` report progress."""
    images, targets = digits()
    output.mkdir(parents=True, exist_ok=True)
    classes = "".join(map(str, settings.pretrain_classes))
    weights = output / f"{settings.backbone}_digits_{classes}.safetensors"
    labels = [str(c) for c in settings.finetune_classes]

    def encode(indices: list[int]) -> list[int]:
        return [settings.finetune_classes.index(int(t)) for t in targets[indices]]

    runs: list[RunResult] = []
    val_size = 0
    with quiet(settings.threads):
        on_run("pretraining")
        pretrain_acc, pretrain_seconds = _pretrain(settings, images, targets, weights, on_epoch)
        for seed in settings.seeds:
            rng = np.random.default_rng(1000 + seed)
            shots = _draw(targets, settings.finetune_classes, settings.shots, rng)
            held = _draw(targets, settings.finetune_classes, settings.val_per_class, rng, frozenset(shots))
            val_size = len(held)
            for name, strategy, pretrained in settings.strategies():
                on_run(f"{name} (seed {seed})")
                pl.seed_everything(seed, workers=True, verbose=False)  # same head init for every strategy
                data = ImageClassificationData.from_arrays(
                    images[shots],
                    encode(shots),
                    images[held],
                    encode(held),
                    labels=labels,
                    batch_size=settings.finetune_batch_size,
                    eval_batch_size=100,
                    image_size=settings.image_size,
                    augment=False,
                )
                model = ImageClassifier(
                    num_classes=len(labels),
                    backbone=settings.backbone,
                    pretrained=weights if pretrained else False,
                    labels=labels,
                    lr=settings.lr,
                    scheduler=settings.scheduler,
                )
                recorder = _EpochRecorder(on_epoch)
                start = time.perf_counter()
                _trainer(settings.epochs, recorder).finetune(model, data, strategy=strategy)
                runs.append(recorder.result(name, seed, time.perf_counter() - start))
    return DemoResult(settings, pretrain_acc, pretrain_seconds, runs, weights, settings.shots, val_size)
