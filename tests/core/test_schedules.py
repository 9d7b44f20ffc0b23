"""Schedules as data, run for real: the ``phases`` and ``gradual_unfreeze`` built-ins, ``layer_lr_decay``,
named param groups, and the schedule given as a dict, a YAML or JSON file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import Recorder, TinyClassifier, TinyViT, image_loader, loader, make_trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.optim import lr_scheduler

from finetune_strategies import (
    GradualUnfreeze,
    Phases,
    ScheduleError,
    StrategySpecError,
    StrategySpecTypeError,
    resolve_strategy,
)

HEAD = {"head.weight", "head.bias"}
LIN0 = {"backbone.0.weight", "backbone.0.bias"}
BN = {"backbone.2.weight", "backbone.2.bias"}
LIN3 = {"backbone.3.weight", "backbone.3.bias"}


def run(spec: Any, epochs: int = 4, model: Any = None, data: Any = None, **kwargs: Any) -> tuple[Any, Recorder]:
    model, rec = model or TinyClassifier(), Recorder()
    trainer = make_trainer(epochs, callbacks=[rec, *kwargs.pop("callbacks", [])], **kwargs.pop("trainer", {}))
    trainer.finetune(model, data or loader(), strategy=spec, **kwargs)
    return model, rec


def check_epochs(model: Any, rec: Recorder, expected: list[tuple[set[str], list[tuple[str | None, set[str], float]]]]):
    """Per epoch: the trainable parameters, and every group (name, parameters by identity, lr); weights
    move exactly where parameters train."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups_by_epoch = [
        [(g, lr) for g, lr in zip(gs, lrs, strict=True)] for gs, lrs in zip(rec.groups, rec.group_lrs, strict=True)
    ]
    for epoch, (trainable, groups) in enumerate(expected):
        assert {n for n, flag in rec.requires_grad[epoch].items() if flag} == trainable, f"epoch {epoch}"
        got = [({names[i] for i in ids}, lr) for ids, lr in groups_by_epoch[epoch]]
        assert [g for g, _ in got] == [params for _, params, _ in groups], f"epoch {epoch}"
        assert [lr for _, lr in got] == pytest.approx([lr for _, _, lr in groups]), f"epoch {epoch}"
        assert rec.group_names[epoch] == [name for name, _, _ in groups], f"epoch {epoch}"
        before = rec.initial if epoch == 0 else rec.weights[epoch - 1]
        for param in names.values():
            moved = not torch.equal(before[param], rec.weights[epoch][param])
            assert moved == (param in trainable), f"{param} at epoch {epoch}: moved={moved}"


# --- phases ---------------------------------------------------------------------------------------
def test_phases_unfreeze_what_each_names_at_its_epoch() -> None:
    spec = {
        "strategy": "phases",
        "phases": [{"epoch": 1, "modules": ["backbone.3"], "lr": 0.05}, {"epoch": 2, "modules": ["backbone[0]"]}],
    }
    model, rec = run(spec, train_bn=False)
    head = (None, HEAD, 0.1)
    check_epochs(
        model,
        rec,
        [
            (HEAD, [head]),
            (HEAD | LIN3, [head, ("backbone.3", LIN3, 0.05)]),
            (HEAD | LIN3 | LIN0, [head, ("backbone.3", LIN3, 0.05), ("backbone.0", LIN0, 0.01)]),
            (HEAD | LIN3 | LIN0, [head, ("backbone.3", LIN3, 0.05), ("backbone.0", LIN0, 0.01)]),
        ],
    )


@pytest.mark.parametrize(
    "selectors", [["re:backbone\\.(0|3)"], ["backbone.?"], ["backbone[0]", "backbone[-2]"], ["backbone.*"]]
)
def test_phase_selectors_names_positions_and_patterns(selectors: list[str]) -> None:
    _model, rec = run({"strategy": "phases", "phases": [{"epoch": 1, "modules": selectors}]}, epochs=2, train_bn=False)
    assert {n for n, flag in rec.requires_grad[1].items() if flag} == HEAD | LIN0 | LIN3


def test_a_phase_without_modules_unfreezes_the_rest() -> None:
    phases = [{"epoch": 1, "modules": ["backbone.3"]}, {"epoch": 2, "name": "everything else"}]
    _model, rec = run({"strategy": "phases", "phases": phases}, epochs=3)
    assert rec.group_names[2] == [None, "backbone.3", "everything else"]
    assert all(rec.requires_grad[2].values())


def test_phase_layer_lr_decay_splits_its_groups_by_layer() -> None:
    phases = [{"epoch": 1, "layer_lr_decay": 0.5, "lr": 0.04}]
    _model, rec = run({"strategy": "phases", "phases": phases}, epochs=2, train_bn=False)
    assert rec.group_names[1] == [None, "backbone.0", "backbone.3"]
    assert rec.group_lrs[1] == pytest.approx([0.1, 0.04 * 0.5**2, 0.04])  # layers 0, 2 (BatchNorm), 3: k = 2, 1, 0


@pytest.mark.parametrize(
    ("phases", "error", "message"),
    [
        ([{"epoch": 1, "modules": ["backbone.9"]}], ScheduleError, r"no child module '9'.*Its children: 0, 1, 2, 3, 4"),
        ([{"epoch": 1, "modules": ["backbon"]}], ScheduleError, r"Did you mean 'backbone'\?"),
        ([{"epoch": 1, "modules": ["re:encoder\\..*"]}], ScheduleError, "matches no module"),
        ([{"epoch": 1, "modules": ["head"]}], ScheduleError, r"not inside the frozen modules \(backbone\)"),
        ([{"epoch": 1}, {"epoch": 2, "modules": ["backbone.0"]}], ScheduleError, r"phases\[1\].*unfreezes nothing"),
    ],
)
def test_a_bad_selector_fails_at_setup_and_nothing_trains(phases: Any, error: type, message: str) -> None:
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        run({"strategy": "phases", "phases": phases}, model=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("phases", "error", "message"),
    [
        ([{"epoch": 3}, {"epoch": 1}], StrategySpecError, r"phases\[1\] starts at epoch 1, before phases\[0\]"),
        ([{"epoch": -1}], StrategySpecError, ">= 0"),
        ([{"modules": ["backbone"]}], StrategySpecTypeError, "needs 'epoch'"),
        ([{"epoch": 1, "moduls": ["x"]}], StrategySpecTypeError, r"'moduls' \(did you mean 'modules'\?\)"),
        ([{"epoch": 1, "modules": "net[a]"}], StrategySpecError, r"\[a\] is not a position"),
        ([{"epoch": 1, "layer_lr_decay": 1.5}], StrategySpecError, r"must be in \(0, 1\]"),
        ([], StrategySpecError, "empty"),
        ({"epoch": 1}, StrategySpecTypeError, "must be a list of phases"),
    ],
)
def test_a_bad_phase_list_fails_at_construction(phases: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_strategy({"strategy": "phases", "phases": phases})


def test_phases_need_their_list() -> None:
    with pytest.raises(StrategySpecTypeError, match=r"'phases' needs \['phases'\]"):
        resolve_strategy("phases")


def test_schedule_from_a_yaml_or_json_file(tmp_path: Path) -> None:
    spec = {"strategy": "phases", "phases": [{"epoch": 1, "modules": ["backbone.3"]}], "train_bn": False}
    (tmp_path / "schedule.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "schedule.json").write_text(json.dumps(spec))
    for path in (tmp_path / "schedule.yaml", str(tmp_path / "schedule.json")):
        callback = resolve_strategy(path)
        assert isinstance(callback, Phases)
        assert callback.train_bn is False
        assert callback.phases[0].modules == ("backbone.3",)
    _, rec = run(str(tmp_path / "schedule.yaml"), epochs=2)
    assert {n for n, flag in rec.requires_grad[1].items() if flag} == HEAD | LIN3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("strategy: [", "Cannot parse"),
        ("- 1\n- 2", "must hold a mapping with a 'strategy' key"),
        (None, "does not exist"),
    ],
)
def test_bad_schedule_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "schedule.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises((StrategySpecError, StrategySpecTypeError), match=message):
        resolve_strategy(path)


# --- gradual_unfreeze -------------------------------------------------------------------------------
def test_gradual_unfreeze_adds_one_layer_from_the_top_each_epoch() -> None:
    model, rec = run(("gradual_unfreeze", 1), epochs=4, train_bn=False)
    head = (None, HEAD, 0.1)
    check_epochs(
        model,
        rec,
        [
            (HEAD, [head]),
            (HEAD | LIN3, [head, ("backbone.3", LIN3, 0.01)]),
            (HEAD | LIN3, [head, ("backbone.3", LIN3, 0.01)]),  # backbone.2 is BatchNorm, kept frozen
            (HEAD | LIN3 | LIN0, [head, ("backbone.3", LIN3, 0.01), ("backbone.0", LIN0, 0.01)]),
        ],
    )


def test_gradual_unfreeze_dict_form_and_ulmfit_decay() -> None:
    spec = {"strategy": "gradual_unfreeze", "start_epoch": 0, "every": 2, "layers_per_step": 2, "layer_unit": "blocks"}
    callback = resolve_strategy(spec, layer_lr_decay=1 / 2.6)
    assert isinstance(callback, GradualUnfreeze)
    _model, rec = run(callback, epochs=3)
    assert rec.group_names[0] == [None, "backbone.3"]  # the BatchNorm layer trains in group 0 (train_bn)
    assert rec.group_names[2] == [None, "backbone.3", "backbone.0"]
    assert rec.group_lrs[2] == pytest.approx([0.1, 0.01, 0.01 / 2.6**2])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"strategy": "gradual_unfreeze", "every": 0}, "`every` must be >= 1"),
        ({"strategy": "gradual_unfreeze", "layers_per_step": 0}, "`layers_per_step` must be >= 1"),
        (("gradual_unfreeze", -1), ">= 0"),
        ({"strategy": "gradual_unfreeze", "layer_unit": "rows"}, "layer_unit"),
    ],
)
def test_gradual_unfreeze_bad_options(spec: Any, message: str) -> None:
    with pytest.raises(StrategySpecError, match=message):
        resolve_strategy(spec)


# --- layer_lr_decay -------------------------------------------------------------------------------
VIT_GROUPS = [
    "backbone.stem",
    "backbone.blocks.0",
    "backbone.blocks.1",
    "backbone.blocks.2",
    "backbone.blocks.3 + backbone.norm",
]


def test_layer_lr_decay_on_a_timm_vit() -> None:
    model, rec = run(("freeze_unfreeze", 1), epochs=2, model=TinyViT(), data=image_loader(), layer_lr_decay=0.5)
    assert rec.group_names[1] == [None, *VIT_GROUPS]
    assert rec.group_lrs[1] == pytest.approx([0.1] + [0.01 * 0.5**k for k in (4, 3, 2, 1, 0)])
    params = dict(model.named_parameters())
    stem = {id(params[n]) for n in ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight")}
    assert stem <= set(rec.groups[1][1])
    flat = [i for group in rec.groups[1] for i in group]
    assert len(flat) == len(set(flat)) == len(params), "every parameter in exactly one group"
    assert all(rec.requires_grad[1].values())
    assert not torch.equal(rec.weights[0]["backbone.cls_token"], rec.weights[1]["backbone.cls_token"])


def test_no_freeze_with_decay_regroups_the_backbone_when_the_optimizer_is_built() -> None:
    model, rec = run({"strategy": "no_freeze", "layer_lr_decay": 0.5}, epochs=1, model=TinyViT(), data=image_loader())
    assert rec.group_names[0] == [None, *VIT_GROUPS]
    assert rec.group_lrs[0] == pytest.approx([0.1] + [0.1 * 0.5**k for k in (4, 3, 2, 1, 0)])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in rec.groups[0][0]} == HEAD


def test_freeze_with_decay_warns_that_it_does_nothing() -> None:
    with pytest.warns(UserWarning, match="layer_lr_decay has no effect: Freeze unfreezes nothing"):
        run("freeze", epochs=1, layer_lr_decay=0.5)


def warm_cosine(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    warm = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3)
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=13)
    return {"scheduler": lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[3]), "interval": "step"}


SCHEDULERS = {
    "cosine": lambda o: {"scheduler": lr_scheduler.CosineAnnealingLR(o, T_max=16), "interval": "step"},
    "onecycle": lambda o: {"scheduler": lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=16), "interval": "step"},
    "warmup_cosine": warm_cosine,
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("strategy", ["freeze_unfreeze", "freeze_unfreeze_deepspeed"])
def test_every_scheduler_drives_every_layer_group_at_its_ratio(name: str, strategy: str) -> None:
    model = TinyClassifier(scheduler=SCHEDULERS[name])
    _, rec = run((strategy, 1), model=model, train_bn=False, layer_lr_decay=0.5)
    ratios = [0.1 * 0.5**2, 0.1]  # layers 0 and 3 (k = 2 and 0) at group 0's lr / 10
    for step, lrs in enumerate(rec.step_lrs[4:], start=4):
        assert lrs[1] == pytest.approx(ratios[0] * lrs[0], rel=1e-6, abs=1e-12), f"step {step}"
        assert lrs[2] == pytest.approx(ratios[1] * lrs[0], rel=1e-6, abs=1e-12), f"step {step}"
    assert len({round(lrs[0], 12) for lrs in rec.step_lrs}) > 3, "the scheduler really changed the lr"


def test_deepspeed_variant_preregisters_one_group_per_layer() -> None:
    _, rec = run(("freeze_unfreeze_deepspeed", 2), epochs=3, train_bn=False, layer_lr_decay=0.5)
    assert rec.group_names[0] == rec.group_names[2] == [None, "backbone.0", "backbone.3"]
    assert rec.group_lrs[0] == [0.1, 0.0, 0.0]
    assert rec.group_lrs[2] == pytest.approx([0.1, 0.0025, 0.01])


def lambda_schedule(optimizer: torch.optim.Optimizer) -> Any:
    return lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)


@pytest.mark.parametrize(
    "spec",
    [
        {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "layer_lr_decay": 0.5},
        {"strategy": "gradual_unfreeze", "start_epoch": 1, "layer_lr_decay": 0.5},
        {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 1, "layer_lr_decay": 0.5},
        {
            "strategy": "phases",
            "phases": [{"epoch": 1, "modules": ["backbone.3"]}, {"epoch": 3, "layer_lr_decay": 0.5}],
        },
    ],
)
def test_resume_with_layer_groups_equals_an_uninterrupted_run(tmp_path: Path, spec: Any) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = TinyClassifier(scheduler=lambda_schedule)
    trainer = make_trainer(5, callbacks=[checkpoints], enable_checkpointing=True)
    trainer.finetune(full, loader(), strategy=spec)
    full_optimizer = trainer.optimizers[0].state_dict()

    resumed, rec = TinyClassifier(scheduler=lambda_schedule), Recorder()
    again = make_trainer(5, callbacks=[rec])
    again.finetune(resumed, loader(), strategy=spec, ckpt_path=tmp_path / "epoch=1.ckpt")
    assert again.optimizers[0].state_dict()["param_groups"] == full_optimizer["param_groups"]
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


# --- named groups in Lightning's LearningRateMonitor -------------------------------------------------
def test_learning_rate_monitor_logs_the_group_names(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="lr")
    run(
        ("gradual_unfreeze", 1),
        epochs=4,
        callbacks=[LearningRateMonitor(logging_interval="epoch")],
        trainer={"logger": logger},
        train_bn=False,
        layer_lr_decay=0.5,
    )
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        columns = next(csv.reader(handle))
    assert {"lr-SGD/pg1", "lr-SGD/backbone.3", "lr-SGD/backbone.0"} <= set(columns)
    assert not any(column.startswith("lr-SGD/pg") and column != "lr-SGD/pg1" for column in columns)
