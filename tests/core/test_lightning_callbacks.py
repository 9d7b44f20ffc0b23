"""Lightning's own callbacks beside a strategy: they train as they would without one."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import (
    BatchSizeFinder,
    EarlyStopping,
    GradientAccumulationScheduler,
    LearningRateFinder,
    ModelCheckpoint,
    StochasticWeightAveraging,
)


@pytest.mark.parametrize(
    ("swa_start", "expected_lrs"),
    [
        # SWA anneals group 0 to 0.05 from epoch 1; the backbone's group joins at epoch 2 at lr / 10 and
        # follows group 0 at that ratio (swa_lr 0.005), as with every scheduler
        (1, [[0.1], [0.05], [0.05, 0.005], [0.05, 0.005], [0.05, 0.005], [0.05, 0.005]]),
        # SWA starts after the unfreeze: it sets every group's swa_lr itself
        (3, [[0.1], [0.1], [0.1, 0.01], [0.05, 0.05], [0.05, 0.05], [0.05, 0.05]]),
    ],
    ids=["before the unfreeze", "after the unfreeze"],
)
def test_stochastic_weight_averaging_learns_the_added_group(
    recorder: Recorder, swa_start: int, expected_lrs: list[list[float]]
) -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=swa_start, annealing_epochs=1)
    model = TinyClassifier()
    make_trainer(5, callbacks=[swa, recorder]).finetune(model, loader(), strategy=("freeze_unfreeze", 2))
    assert [len(lrs) for lrs in recorder.group_lrs] == [len(lrs) for lrs in expected_lrs]
    for found, expected in zip(recorder.group_lrs, expected_lrs, strict=True):
        assert found == pytest.approx(expected)
    assert not torch.equal(recorder.weights[1]["backbone.0.weight"], model.backbone[0].weight)  # it trained
    assert all(p.requires_grad for p in model.parameters())


class ConstantMetric(TinyClassifier):
    """Logs a validation metric that never improves, so that EarlyStopping stops after its patience."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("flat", 1.0)


def test_early_stopping_waits_for_the_last_phase(recorder: Recorder) -> None:
    stopper = EarlyStopping("flat", patience=1)
    model = ConstantMetric()
    trainer = make_trainer(10, callbacks=[stopper, recorder])
    trainer.finetune(model, train_dataloaders=loader(), val_dataloaders=loader(16), strategy=("freeze_unfreeze", 3))
    # without the strategy it stops after epoch 1; held until the unfreeze at 3, it counts from there
    assert len(recorder.weights) == 5
    assert stopper.stopped_epoch == 4
    assert not torch.equal(recorder.weights[2]["backbone.0.weight"], recorder.weights[4]["backbone.0.weight"])
    plain = make_trainer(10, callbacks=[EarlyStopping("flat", patience=1)])
    plain.fit(ConstantMetric(), loader(), loader(16))
    assert plain.current_epoch == 2  # what a plain run does: epochs 0 and 1


class TunedClassifier(TinyClassifier):
    """Loaders as methods and a ``batch_size`` attribute, as Lightning's tuner callbacks need."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 8

    def train_dataloader(self) -> Any:
        return loader(32, self.batch_size)

    def val_dataloader(self) -> Any:
        return loader(16)


@pytest.mark.parametrize(
    "finder",
    [
        lambda: BatchSizeFinder(max_trials=1, steps_per_trial=10, init_val=8),
        lambda: LearningRateFinder(num_training_steps=12, early_stop_threshold=None, update_attr=False),
    ],
    ids=["BatchSizeFinder", "LearningRateFinder"],
)
def test_tuner_callbacks_leave_the_real_fit_as_it_would_be(finder: Any) -> None:
    """The tuners' trial fits run with the backbone frozen, as the first stage; the real fit then starts
    frozen, with the strategy's groups, and trains exactly as a fit without the tuner."""
    runs = []
    for callbacks in ([], [finder()]):
        model, rec = TunedClassifier(), Recorder()
        make_trainer(3, callbacks=[*callbacks, rec]).finetune(model, strategy=("freeze_unfreeze", 1))
        runs.append((model, rec))
    (plain, plain_rec), (tuned, tuned_rec) = runs
    assert tuned_rec.requires_grad == plain_rec.requires_grad
    assert not tuned_rec.requires_grad[0]["backbone.0.weight"]
    assert tuned_rec.group_names == plain_rec.group_names == [[None], [None, "backbone"], [None, "backbone"]]
    for key, value in plain.state_dict().items():
        assert torch.equal(tuned.state_dict()[key], value), key


def test_learning_rate_finder_sets_the_lr_the_added_group_follows(recorder: Recorder) -> None:
    model = TunedClassifier()
    model.batch_size = 2  # 16 steps an epoch: enough for a suggestion within max_epochs
    finder = LearningRateFinder(min_lr=1e-3, max_lr=1e-1, num_training_steps=40, early_stop_threshold=None)
    make_trainer(3, callbacks=[finder, recorder]).finetune(model, strategy=("freeze_unfreeze", 1))
    assert model.lr != 0.1  # the suggestion
    assert recorder.group_lrs[0] == [model.lr]
    assert recorder.group_lrs[1] == pytest.approx([model.lr, model.lr / 10])


def test_gradient_accumulation_changes_with_the_unfreeze(recorder: Recorder) -> None:
    accumulate = GradientAccumulationScheduler({0: 1, 1: 2, 2: 4})
    model = TinyClassifier()
    trainer = make_trainer(3, callbacks=[accumulate, recorder])
    trainer.finetune(model, loader(), strategy=("freeze_unfreeze", 1))
    assert trainer.global_step == 4 + 2 + 1  # 4 batches an epoch, stepped every 1, 2 and 4 of them
    weights = [recorder.initial, *recorder.weights]
    moved = [not torch.equal(a["backbone.0.weight"], b["backbone.0.weight"]) for a, b in itertools.pairwise(weights)]
    assert moved == [False, True, True]
    assert [len(lrs) for lrs in recorder.group_lrs] == [1, 2, 2]


def test_model_checkpoint_files_load_and_resume_as_the_uninterrupted_run(tmp_path: Path) -> None:
    spec = ("freeze_unfreeze", 2)
    whole = TinyClassifier()
    make_trainer(4).finetune(whole, train_dataloaders=loader(), val_dataloaders=loader(16), strategy=spec)
    saver = ModelCheckpoint(tmp_path, monitor="val_loss", save_top_k=-1, save_last=True, filename="{epoch}")
    make_trainer(4, callbacks=[saver], enable_checkpointing=True).finetune(
        TinyClassifier(), train_dataloaders=loader(), val_dataloaders=loader(16), strategy=spec
    )
    assert Path(saver.best_model_path).is_file()
    assert (tmp_path / "last.ckpt").is_file()
    checked = make_trainer(1).validate(TinyClassifier(), loader(16), ckpt_path=saver.best_model_path)
    assert checked[0]["val_loss"] == pytest.approx(saver.best_model_score.item())
    for epoch in (1, 2):  # before and after the unfreeze
        resumed = TinyClassifier()
        make_trainer(4).finetune(
            resumed,
            train_dataloaders=loader(),
            val_dataloaders=loader(16),
            strategy=spec,
            ckpt_path=tmp_path / f"epoch={epoch}.ckpt",
        )
        for key, value in whole.state_dict().items():
            assert torch.allclose(resumed.state_dict()[key].float(), value.float(), atol=1e-6), (epoch, key)


class NamedGroup(TinyClassifier):
    """Names its optimizer's group, as docs/correctness.md advises for LearningRateMonitor."""

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD([{"params": params, "name": "head"}], lr=self.lr)


def _lr_columns(tmp_path: Path, model: TinyClassifier) -> dict[str, list[str]]:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="lr")
    monitor = LearningRateMonitor(logging_interval="epoch")
    make_trainer(3, logger=logger, callbacks=[monitor]).finetune(model, loader(), strategy=("freeze_unfreeze", 1))
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    columns = sorted(c for c in rows[0] if c.startswith("lr-"))
    return {c: [row[c] for row in rows if row[c]] for c in columns}


def test_learning_rate_monitor_logs_a_named_group_in_one_column_from_start_to_end(tmp_path: Path) -> None:
    columns = _lr_columns(tmp_path, NamedGroup())
    assert list(columns) == ["lr-SGD/backbone", "lr-SGD/head"]
    assert [float(v) for v in columns["lr-SGD/head"]] == [0.1, 0.1, 0.1]  # every epoch
    assert [float(v) for v in columns["lr-SGD/backbone"]] == pytest.approx([0.01, 0.01])  # from the unfreeze


def test_learning_rate_monitor_renames_an_unnamed_group_zero_when_a_group_is_added(tmp_path: Path) -> None:
    # Lightning's naming, which the library leaves alone (the model's own groups keep what
    # configure_optimizers gave them): `lr-SGD` while group 0 is alone, `lr-SGD/pg1` once there are two
    columns = _lr_columns(tmp_path, TinyClassifier())
    assert list(columns) == ["lr-SGD", "lr-SGD/backbone", "lr-SGD/pg1"]
    assert (len(columns["lr-SGD"]), len(columns["lr-SGD/pg1"])) == (1, 2)
