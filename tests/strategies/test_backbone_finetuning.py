"""``backbone_finetuning`` reproduces Lightning's ``BackboneFinetuning``: run both on the same model, data and
seed, and compare every group's lr at every step and the weights after every epoch."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_TRAINER, Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import BackboneFinetuning
from torch.optim import lr_scheduler

from finetune_strategies import BackboneFinetuningStrategy, ScheduleError, StrategySpecError, resolve_strategy
from finetune_strategies.core.groups import LrRamp, ParamGroups, plan_groups


def step_lr(optimizer: torch.optim.Optimizer) -> Any:
    return lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def growing(epoch: int) -> float:
    return 1.0 + epoch / 4


SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # name -> (the callbacks' arguments, what ours takes instead, TinyClassifier's arguments)
    "defaults": ({"unfreeze_backbone_at_epoch": 1}, {}, {}),
    "no_align": ({"unfreeze_backbone_at_epoch": 1, "should_align": False}, {}, {}),
    "custom_lambda": (
        {"unfreeze_backbone_at_epoch": 2, "lambda_func": growing, "backbone_initial_ratio_lr": 0.3},
        {},
        {},
    ),
    "initial_lr": ({"unfreeze_backbone_at_epoch": 1, "backbone_initial_lr": 0.003, "initial_denom_lr": 4.0}, {}, {}),
    # Lightning freezes the backbone with train_bn=True whatever it is given (its train_bn only filters the
    # unfreeze's group), so its BatchNorm layers train from epoch 0: ours does that with train_bn=True.
    "lightning_train_bn_false_adamw": (
        {"unfreeze_backbone_at_epoch": 1, "train_bn": False, "lambda_func": growing},
        {"train_bn": True},
        {"optimizer": "adamw", "lr": 0.03},
    ),
    "step_lr": ({"unfreeze_backbone_at_epoch": 1, "lambda_func": growing}, {}, {"scheduler": step_lr}),
}


def fit(callback: pl.Callback, model_args: dict[str, Any], epochs: int = 7) -> tuple[TinyClassifier, Recorder]:
    model, recorder = TinyClassifier(**model_args), Recorder()
    torch.manual_seed(1)
    pl.Trainer(max_epochs=epochs, callbacks=[callback, recorder], **QUIET_TRAINER).fit(model, loader())
    return model, recorder


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_same_lrs_and_weights_as_lightning(name: str) -> None:
    args, ours_instead, model_args = SETTINGS[name]
    _, their_rec = fit(BackboneFinetuning(**args), model_args)
    _, our_rec = fit(BackboneFinetuningStrategy(**{**args, **ours_instead}), model_args)
    assert our_rec.step_lrs == their_rec.step_lrs  # every group, every step: equal, not close
    assert len(our_rec.group_lrs[-1]) == 2
    for epoch, (mine, lightning) in enumerate(zip(our_rec.weights, their_rec.weights, strict=True)):
        for key, value in lightning.items():
            difference = (mine[key].double() - value.double()).abs().max().item()
            assert difference <= 1e-6, f"{key} at epoch {epoch}: {difference}"
    assert our_rec.group_lrs != [our_rec.group_lrs[0]] * len(our_rec.group_lrs)  # the ramp moved something


def test_the_ramp_doubles_then_aligns() -> None:
    _, rec = fit(resolve_strategy(("backbone_finetuning", 1)), {})
    expected = [[0.1]] + [[0.1, 0.01 * 2**k] for k in range(4)] + [[0.1, 0.1]] * 2
    assert [len(lrs) for lrs in rec.group_lrs] == [len(lrs) for lrs in expected]
    assert [lr for lrs in rec.group_lrs for lr in lrs] == pytest.approx([lr for lrs in expected for lr in lrs])


def test_verbose_logs_the_lrs(caplog: pytest.LogCaptureFixture) -> None:
    # Lightning's logger stops propagating to the root logger when it is imported before any handler is set
    # up (in a full run), so listen on it directly
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            fit(BackboneFinetuningStrategy(1, verbose=True, rounding=3), {}, epochs=3)
    finally:
        logger.removeHandler(caplog.handler)
    assert "Epoch 1: current lr: 0.1, backbone lr: 0.01" in caplog.text
    assert "Epoch 2: current lr: 0.1, backbone lr: 0.02" in caplog.text


def test_resume_continues_the_ramp(tmp_path: Any) -> None:
    _, whole = fit(BackboneFinetuningStrategy(1), {}, epochs=5)
    first = make_trainer(3, default_root_dir=tmp_path, enable_checkpointing=True)
    first.finetune(TinyClassifier(), loader(), strategy=BackboneFinetuningStrategy(1))
    recorder = Recorder()
    second = make_trainer(5, default_root_dir=tmp_path, callbacks=[recorder])
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    second.finetune(TinyClassifier(), loader(), strategy=BackboneFinetuningStrategy(1), ckpt_path=path)
    assert recorder.group_lrs == whole.group_lrs[3:]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambda_func": 1.5}, "`lambda_func` must be a function"),
        ({"backbone_initial_ratio_lr": 0}, "backbone_initial_ratio_lr"),
        ({"backbone_initial_lr": 0.01, "lr": 0.02}, "give one of them"),
        ({"should_align": "yes"}, "should_align"),
        ({"unfreeze_backbone_at_epoch": -1}, "unfreeze_backbone_at_epoch"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((StrategySpecError, TypeError), match=message):
        BackboneFinetuningStrategy(**kwargs)


def test_a_bad_factor_is_refused_when_it_is_used() -> None:
    with pytest.raises(ScheduleError, match=r"returned -1 for epoch 2 \(called with 3\)"):
        fit(BackboneFinetuningStrategy(1, lambda_func=lambda epoch: -1), {}, epochs=3)


# ------------------------------------------------------------------ the core mechanism, on its own
def test_lr_ramp_on_layer_groups_follows_each_groups_factor() -> None:
    """An :class:`LrRamp` on a phase with layer-wise decay: each group starts at its factor, ramps, and
    aligns to group 0's lr times its factor."""
    model = TinyClassifier()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    layers = [type("L", (), {"modules": (model.backbone[0],), "name": "b0"})(), None]
    layers[1] = type("L", (), {"modules": (model.backbone[3],), "name": "b3"})()
    phase = type(
        "P",
        (),
        {
            "label": "backbone",
            "lr": None,
            "layer_lr_decay": 0.5,
            "lr_ramp": LrRamp(lambda epoch: 3.0, align=True, start_ratio=0.1),
            "thawed_modules": lambda self: [model.backbone[0], model.backbone[3]],
        },
    )()
    plans = plan_groups(
        [phase],
        train_bn=True,
        kept_trainable=set(),
        lr=None,
        layer_lr_decay=None,
        layers=lambda: layers,
        name_params=lambda params: "x",
    )
    groups = ParamGroups(plans, preregister=False, initial_denom_lr=10.0)
    groups.start(0, optimizer, [], set(), epoch=0)
    lrs = [[g["lr"] for g in optimizer.param_groups]]
    for epoch in (1, 1, 2, 3):  # the second call at epoch 1 (a mid-epoch resume) does not ramp again
        groups.ramp(epoch, optimizer, [])
        lrs.append([g["lr"] for g in optimizer.param_groups])
    expected = [[0.1, 0.005, 0.01], [0.1, 0.015, 0.03], [0.1, 0.015, 0.03], [0.1, 0.045, 0.09], [0.1, 0.05, 0.1]]
    assert [lr for row in lrs for lr in row] == pytest.approx([lr for lrs in expected for lr in lrs])
    restored = ParamGroups(plans, preregister=False, initial_denom_lr=10.0)
    restored.load_ramp_state(groups.ramp_state())
    assert restored.ramped == groups.ramped
