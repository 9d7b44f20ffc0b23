"""Phases that end when the validation metric says so, run for real.

The model logs ``val_score`` from a fixed sequence, one value per epoch, so each test puts the plateau
where it wants it and knows the epoch of the transition.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from finetune_strategies import (
    ConfigurationError,
    FinetuningStrategy,
    StrategySpecError,
    StrategySpecTypeError,
    TrainableMonitor,
    describe_schedule,
    resolve_strategy,
)

BACKBONE = "backbone.0.weight"


class Scored(TinyClassifier):
    """Logs ``val_score`` from ``scores``, one value per epoch (and ``val_loss`` as TinyClassifier does)."""

    def __init__(self, scores: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scores = scores

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("val_score", torch.tensor(float(self.scores[self.current_epoch])))


class AtEpochStart(pl.Callback):
    """The whole state of the model at each epoch start (after the strategy's epoch-start work)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def fit(spec: Any, scores: list[float], epochs: int, *callbacks: pl.Callback, model: Any = None, **options: Any):
    model = model or Scored(scores)
    rec, starts = Recorder(), AtEpochStart()
    trainer = make_trainer(epochs, callbacks=[rec, starts, *callbacks])
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=spec, **options)
    strategy = next(c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))
    return model, rec, starts, strategy, trainer


PLATEAU_AT_4 = [1.0, 0.9, 0.8, 0.85, 0.86, 0.7, 0.6, 0.5]  # best at epoch 2; patience 2 runs out at 4
UNFREEZE_ON_PLATEAU = {"strategy": "freeze_unfreeze", "unfreeze_epoch": None, "monitor": "val_score", "patience": 2}


def backbone_trains(rec: Recorder) -> list[bool]:
    return [flags[BACKBONE] for flags in rec.requires_grad]


def test_the_backbone_unfreezes_the_epoch_after_the_plateau() -> None:
    _, rec, _, strategy, _ = fit(UNFREEZE_ON_PLATEAU, PLATEAU_AT_4, 7)
    assert backbone_trains(rec) == [False] * 5 + [True] * 2
    (transition,) = strategy.transitions
    assert (transition.epoch, transition.phase, transition.best_epoch) == (5, 0, 2)
    assert transition.best == pytest.approx(0.8)  # metrics are float32
    assert "val_score plateaued" in transition.reason
    assert rec.group_names[5] == [None, "backbone"]


def test_restore_best_puts_back_the_best_epochs_weights_and_buffers() -> None:
    _, rec, starts, _, _ = fit(UNFREEZE_ON_PLATEAU, PLATEAU_AT_4, 6)
    restored, best = starts.states[5], rec.weights[2]  # the end of epoch 2 is what validation 2 saw
    assert restored.keys() == best.keys()
    for name in restored:
        assert torch.equal(restored[name], best[name]), name
    assert not torch.equal(rec.weights[4]["head.weight"], best["head.weight"]), "epochs 3-4 did move the head"
    assert not torch.equal(rec.weights[4]["backbone.2.running_mean"], best["backbone.2.running_mean"])


def test_without_restore_best_the_last_weights_carry_on() -> None:
    _, rec, starts, _, _ = fit({**UNFREEZE_ON_PLATEAU, "restore_best": False}, PLATEAU_AT_4, 6)
    for name, tensor in starts.states[5].items():
        assert torch.equal(tensor, rec.weights[4][name]), name


@pytest.mark.parametrize(
    ("options", "epoch", "reason"),
    [
        ({"max_epochs": 3}, 3, "max_epochs=3"),
        ({"unfreeze_epoch": 2}, 2, "epoch 2"),
    ],
)
def test_a_stage_that_keeps_improving_ends_at_its_cap(options: dict[str, Any], epoch: int, reason: str) -> None:
    improving = [1.0 - 0.1 * e for e in range(8)]
    _, rec, _, strategy, _ = fit({**UNFREEZE_ON_PLATEAU, **options}, improving, 5)
    assert [t.epoch for t in strategy.transitions] == [epoch]
    assert reason in strategy.transitions[0].reason
    assert backbone_trains(rec) == [False] * epoch + [True] * (5 - epoch)


def test_mode_max_and_min_delta() -> None:
    scores = [0.5, 0.6, 0.605, 0.608, 0.7]  # less than min_delta=0.01 above the best is no improvement
    spec = {**UNFREEZE_ON_PLATEAU, "mode": "max", "patience": 2, "min_delta": 0.01}
    _, _, _, strategy, _ = fit(spec, scores, 5)
    assert [(t.epoch, t.best_epoch) for t in strategy.transitions] == [(4, 1)]
    assert strategy.transitions[0].best == pytest.approx(0.6)


def test_unfreeze_milestones_and_gradual_unfreeze_take_plateau_triggers() -> None:
    scores = [1.0, 1.0, 0.5, 0.5, 0.4, 0.4, 0.4]  # plateaus after epochs 1 (wait from 0), 3 and 5
    plateau = {"monitor": "val_score", "patience": 1}
    _, rec, _, strategy, _ = fit({"strategy": "unfreeze_milestones", "milestones": (10, 20), "num_layers": 1,
                                  **plateau}, scores, 7, train_bn=False)  # fmt: skip
    assert [t.epoch for t in strategy.transitions] == [2, 4]
    assert [flags["backbone.3.weight"] for flags in rec.requires_grad] == [False] * 2 + [True] * 5
    assert backbone_trains(rec) == [False] * 4 + [True] * 3
    _, rec, _, strategy, _ = fit({"strategy": "gradual_unfreeze", "start_epoch": 10, **plateau}, scores, 7)
    assert [t.epoch for t in strategy.transitions] == [2, 4, 6]


def test_phases_with_until_and_their_own_lr_scheduler() -> None:
    spec = {
        "strategy": "phases",
        "monitor": "val_score",  # ends the head-only stage
        "patience": 1,
        "phases": [
            {"modules": ["backbone.3"], "until": {"monitor": "val_score", "patience": 1, "max_epochs": 3}},
            {
                "modules": ["backbone.0"],
                "lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
                "reset_optimizer_state": True,
            },
        ],
    }
    scores = [1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # head plateaus after 1; backbone.3 keeps improving
    _, rec, _, strategy, trainer = fit(spec, scores, 7, train_bn=False)
    assert [(t.epoch, t.label) for t in strategy.transitions] == [(2, "backbone.3"), (5, "backbone.0")]
    assert "max_epochs=3" in strategy.transitions[1].reason
    assert rec.group_names[5] == [None, "backbone.3", "backbone.0"]
    # From epoch 5 the phase's StepLR halves every group each epoch, keeping their ratios.
    assert rec.group_lrs[5] == pytest.approx([0.1, 0.01, 0.01])
    assert rec.group_lrs[6] == pytest.approx([0.05, 0.005, 0.005])
    (config,) = trainer.lr_scheduler_configs
    assert type(config.scheduler).__name__ == "StepLR"


def test_reset_optimizer_state_clears_the_momentum() -> None:
    class MomentumAtStart(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.sizes = [*getattr(self, "sizes", []), len(trainer.optimizers[0].state)]

    spec = {"strategy": "phases", "phases": [{"epoch": 2, "reset_optimizer_state": True}]}
    probe = MomentumAtStart()
    fit(spec, [1.0] * 4, 4, probe, train_bn=False)
    assert probe.sizes == [0, 2, 0, 6]  # the head's 2 tensors, cleared when the phase starts, then 2 + 4


def test_early_stopping_counts_only_from_the_last_phase() -> None:
    scores = [1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]  # flat while frozen, then flat again
    spec = {**UNFREEZE_ON_PLATEAU, "patience": 3}  # the head-only stage ends after epoch 3
    stop = EarlyStopping(monitor="val_score", patience=2, mode="min")
    _, rec, _, strategy, trainer = fit(spec, scores, 10, stop)
    assert [t.epoch for t in strategy.transitions] == [4]
    # From epoch 4: 0.9 improves once, then epochs 5 and 6 do not: EarlyStopping stops after epoch 6.
    assert trainer.current_epoch == 7
    assert stop.stopped_epoch == 6
    assert backbone_trains(rec) == [False] * 4 + [True] * 3


def test_early_stopping_alone_would_have_stopped_in_the_frozen_stage() -> None:
    """The power check: the same EarlyStopping, with a strategy that has no later phase, stops at epoch 2."""
    stop = EarlyStopping(monitor="val_score", patience=2, mode="min")
    _, _, _, _, trainer = fit("freeze", [1.0] * 10, 10, stop)
    assert stop.stopped_epoch == 2
    assert trainer.current_epoch == 3


def test_early_stopping_placed_before_the_strategy_is_held_too() -> None:
    scores = [1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9]
    stop = EarlyStopping(monitor="val_score", patience=1, mode="min")
    strategy = resolve_strategy({**UNFREEZE_ON_PLATEAU, "patience": 3})
    model, rec = Scored(scores), Recorder()
    trainer = make_trainer(8, callbacks=[stop, strategy, rec])  # a plain Trainer, in the user's order
    trainer.fit(model, loader(), val_dataloaders=loader(16))
    assert [t.epoch for t in strategy.transitions] == [4]
    assert stop.stopped_epoch == 5


def test_resume_in_the_middle_of_a_watched_stage(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    model, rec = Scored(PLATEAU_AT_4), Recorder()
    trainer = make_trainer(7, callbacks=[rec, checkpoints], enable_checkpointing=True)
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=UNFREEZE_ON_PLATEAU)
    state = torch.load(tmp_path / "epoch=3.ckpt", weights_only=False)
    (saved,) = [s for s in state["callbacks"].values() if "stage" in s]
    assert (saved["stage"]["wait"], saved["stage"]["best_epoch"]) == (1, 2)
    assert saved["stage"]["best"] == pytest.approx(0.8)

    resumed = Scored(PLATEAU_AT_4)
    again = make_trainer(7)
    again.finetune(resumed, loader(), val_dataloaders=loader(16), strategy=UNFREEZE_ON_PLATEAU,
                   ckpt_path=tmp_path / "epoch=3.ckpt")  # fmt: skip
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


# --- visibility ----------------------------------------------------------------------------------
def test_the_plan_and_the_monitor_show_the_trigger() -> None:
    spec = {**UNFREEZE_ON_PLATEAU, "patience": 2, "max_epochs": 5, "mode": "max"}
    plan = describe_schedule(Scored(PLATEAU_AT_4), spec, max_epochs=7)
    assert "until val_score plateaus (patience 2, at most 5 epochs)" in plan.starts[0]
    assert "until val_score plateaus (patience 2, at most 5 epochs)" in plan.epochs[5].started[0]
    monitor = TrainableMonitor(log=False)
    fit(UNFREEZE_ON_PLATEAU, PLATEAU_AT_4, 6, monitor)
    assert monitor.transition_epochs() == [5]
    assert "val_score plateaued; best 0.8 at epoch 2" in monitor.records[5].transitions[0]


# --- bad input -----------------------------------------------------------------------------------
def test_a_monitor_never_logged_fails_after_the_first_validation_naming_the_logged_ones() -> None:
    spec = {**UNFREEZE_ON_PLATEAU, "monitor": "val_acc"}
    model = Scored(PLATEAU_AT_4)
    with pytest.raises(
        ConfigurationError, match=r"'val_acc', which was not logged.*Logged metrics: .*val_loss, val_score"
    ):
        fit(spec, PLATEAU_AT_4, 5, model=model)


def test_a_plateau_trigger_without_validation_fails_at_setup_and_nothing_trains() -> None:
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigurationError, match="runs no validation"):
        make_trainer(3, limit_val_batches=0).finetune(
            model, loader(), val_dataloaders=loader(), strategy=UNFREEZE_ON_PLATEAU
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"patience": 0}, StrategySpecError, "`patience` must be >= 1"),
        ({"mode": "avg"}, StrategySpecError, "`mode` must be 'min' or 'max'"),
        ({"min_delta": -1.0}, StrategySpecError, "min_delta"),
        ({"max_epochs": 0}, StrategySpecError, "max_epochs"),
        ({"monitor": None}, StrategySpecError, "unfreeze_epoch=None .* needs `monitor`"),
        ({"restore_best": "yes"}, StrategySpecTypeError, "restore_best"),
    ],
)
def test_bad_trigger_options_fail_at_construction(change: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_strategy({**UNFREEZE_ON_PLATEAU, **change})


@pytest.mark.parametrize(
    ("phases", "message"),
    [
        ([{"modules": ["backbone.3"]}], r"phases\[0\] needs 'epoch'"),
        ([{"epoch": 1}, {"modules": ["backbone.0"]}], r"phases\[1\] needs 'epoch'"),
        ([{"epoch": 1, "until": {"mode": "max"}}], "at least 'monitor'"),
        ([{"epoch": 1, "until": {"monitor": "x", "patiense": 2}}], r"'patiense' \(did you mean 'patience'\?\)"),
        ([{"epoch": 1, "lr_scheduler": {"class_path": "NoSuchLR"}}], "NoSuchLR"),
    ],
)
def test_bad_phase_triggers_fail_at_construction(phases: Any, message: str) -> None:
    with pytest.raises((StrategySpecError, StrategySpecTypeError), match=message):
        resolve_strategy({"strategy": "phases", "phases": phases})


def test_a_phase_scheduler_without_a_length_spans_the_rest_of_the_run() -> None:
    spec = {"strategy": "phases", "phases": [{"epoch": 2, "lr_scheduler": "cosine"}]}
    _, rec, _, _, trainer = fit(spec, [1.0] * 6, 6, train_bn=False)
    (config,) = trainer.lr_scheduler_configs
    assert config.scheduler.T_max == 4  # epochs 2..5
    assert rec.group_lrs[2] == pytest.approx([0.1, 0.01])
    assert rec.group_lrs[5][1] / rec.group_lrs[5][0] == pytest.approx(0.1)  # groups keep their ratio
    assert rec.group_lrs[5][0] == pytest.approx(0.1 * (1 + math.cos(math.pi * 3 / 4)) / 2)


def test_restore_best_with_min_delta_keeps_the_trigger_s_best_not_model_checkpoint_s(tmp_path: Path) -> None:
    # epoch 2 is lower than epoch 1, but by less than min_delta: for the trigger (as for EarlyStopping's
    # best_score) it is no improvement, so epoch 1 is put back; ModelCheckpoint's best is epoch 2
    scores = [1.0, 0.8, 0.75, 0.9, 0.9, 0.9]
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_score", mode="min", save_top_k=1)
    rec, starts = Recorder(), AtEpochStart()
    trainer = make_trainer(5, callbacks=[rec, starts, checkpoint], enable_checkpointing=True)
    options = {**UNFREEZE_ON_PLATEAU, "min_delta": 0.1}
    trainer.finetune(Scored(scores), loader(), val_dataloaders=loader(16), strategy=options)
    strategy = next(c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))
    (transition,) = strategy.transitions
    assert (transition.epoch, transition.best_epoch) == (4, 1)
    for name, tensor in starts.states[4].items():
        assert torch.equal(tensor, rec.weights[1][name]), name
    assert checkpoint.best_model_score == pytest.approx(0.75)
    assert "epoch=2" in checkpoint.best_model_path
