"""The one optimizer / LR-scheduler spec language: every form, checked arguments, defaults, clear errors."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from finetune_strategies.core.optim import parse_optimizer, parse_scheduler
from finetune_strategies.errors import ModelConfigError, StrategySpecError, TransferConfigError


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=lr)


@pytest.mark.parametrize(
    "spec",
    [
        "adamw",
        "AdamW",
        "torch.optim.AdamW",
        torch.optim.AdamW,
        {"class_path": "adamw"},
        {"class_path": "torch.optim.AdamW", "init_args": None},
        {"class_path": torch.optim.AdamW, "init_args": {}},
    ],
)
def test_every_optimizer_form_gives_the_same_class(spec: Any) -> None:
    parsed = parse_optimizer(spec, "optimizer")
    assert parsed.cls is torch.optim.AdamW
    assert parsed.init_args == {}


@pytest.mark.parametrize(
    "spec",
    [
        "cosine",
        "CosineAnnealingLR",
        "cosine_annealing_lr",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        lr_scheduler.CosineAnnealingLR,
        {"class_path": "cosine"},
        {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR"},
    ],
)
def test_every_scheduler_form_gives_the_same_class(spec: Any) -> None:
    assert parse_scheduler(spec, "scheduler").cls is lr_scheduler.CosineAnnealingLR


def test_a_mapping_spec_builds_with_its_arguments_and_lightning_keys() -> None:
    optimizer = parse_optimizer({"class_path": "SGD", "init_args": {"lr": 0.5, "momentum": 0.9}}, "o")
    built = optimizer.build(nn.Linear(2, 1).parameters())
    assert isinstance(built, torch.optim.SGD)
    assert built.defaults["lr"] == 0.5
    assert built.defaults["momentum"] == 0.9
    spec = {"class_path": "StepLR", "init_args": {"step_size": 2}, "interval": "step", "frequency": 3, "monitor": "m"}
    config = parse_scheduler(spec, "s").build(built)
    assert isinstance(config["scheduler"], lr_scheduler.StepLR)
    assert config["scheduler"].step_size == 2
    assert (config["interval"], config["frequency"], config["monitor"]) == ("step", 3, "m")


def test_a_phase_scheduler_parses_and_builds_without_a_trainer() -> None:
    spec = parse_scheduler({"class_path": "CosineAnnealingLR", "init_args": {"T_max": 10}}, "phases[1].lr_scheduler")
    config = spec.build(_optimizer())
    assert config["scheduler"].T_max == 10
    assert config["interval"] == "epoch"
    assert "monitor" not in config


def test_missing_values_take_defaults_from_the_trainer_and_the_optimizer() -> None:
    trainer: Any = SimpleNamespace(max_epochs=9, estimated_stepping_batches=40)
    assert parse_scheduler("cosine", "s").build(_optimizer(), trainer)["scheduler"].T_max == 9
    step = parse_scheduler("step", "s").build(_optimizer(), trainer)["scheduler"]
    assert (step.step_size, step.gamma) == (3, 0.1)
    assert parse_scheduler("exponential", "s").build(_optimizer(), trainer)["scheduler"].gamma == 0.9
    cycle = parse_scheduler("onecycle", "s").build(_optimizer(lr=0.3), trainer)
    assert cycle["scheduler"].total_steps == 40
    assert cycle["scheduler"].optimizer.param_groups[0]["max_lr"] == 0.3
    assert cycle["interval"] == "step"
    assert (
        parse_scheduler({"class_path": "onecycle", "interval": "epoch"}, "s").build(_optimizer(), trainer)["interval"]
        == "epoch"
    )
    plateau = parse_scheduler("plateau", "s", default_monitor="val_loss").build(_optimizer())
    assert plateau["monitor"] == "val_loss"
    assert (
        parse_scheduler({"class_path": "plateau", "monitor": "acc"}, "s", default_monitor="val_loss").monitor == "acc"
    )
    # given values win over the defaults
    assert (
        parse_scheduler({"class_path": "cosine", "init_args": {"T_max": 2}}, "s")
        .build(_optimizer(), trainer)["scheduler"]
        .T_max
        == 2
    )


def test_defaults_that_need_a_trainer_say_so() -> None:
    with pytest.raises(ModelConfigError, match="CosineAnnealingLR takes its T_max from the trainer's max_epochs"):
        parse_scheduler("cosine", "s", error=ModelConfigError).build(_optimizer())
    with pytest.raises(StrategySpecError, match="OneCycleLR needs total_steps"):
        parse_scheduler("onecycle", "s").build(_optimizer())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("adamm", r"optimizer: Unknown optimizer 'adamm'\. Did you mean Adam.*Choose one of: .*SGD"),
        ("torch.optim.Adamm", r"optimizer: torch\.optim has no class 'Adamm'"),
        ("no_such_module.Adam", r"optimizer: cannot import 'no_such_module'"),
        ("torch.nn.Linear", r"optimizer: Linear is not a torch\.optim\.Optimizer"),
        (3, r"optimizer must be a class name, a dotted class path, a class or a mapping"),
        ({"init_args": {"lr": 1}}, r"optimizer needs a 'class_path'"),
        ({"class_path": "sgd", "init_arg": {}}, r"unknown key\(s\) 'init_arg' \(did you mean 'init_args'\?\)"),
        ({"class_path": "sgd", "init_args": {"learning_rate": 1}}, r"SGD does not take \['learning_rate'\]. It takes"),
        ({"class_path": "sgd", "init_args": [1]}, r"`optimizer\.init_args` must be a mapping"),
    ],
)
def test_bad_optimizer_specs_are_explained(spec: Any, message: str) -> None:
    with pytest.raises(TransferConfigError, match=message):
        parse_optimizer(spec, "optimizer", error=TransferConfigError)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cosin", r"Unknown scheduler 'cosin'\. Did you mean cosine"),
        ("torch.optim.SGD", r"SGD is not a torch LR scheduler"),
        ({"class_path": "StepLR", "interval": "batch"}, r"scheduler\.interval must be 'epoch' or 'step'"),
        ({"class_path": "StepLR", "frequency": 0}, r"`scheduler\.frequency` must be >= 1"),
        ({"class_path": "StepLR", "monitor": 3}, r"scheduler\.monitor must be a logged metric name"),
        ({"class_path": "plateau"}, r"ReduceLROnPlateau needs 'monitor'"),
        ({"class_path": "StepLR", "init_args": {"steps": 2}}, r"StepLR does not take \['steps'\]"),
    ],
)
def test_bad_scheduler_specs_are_explained(spec: Any, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        parse_scheduler(spec, "scheduler", error=ModelConfigError)


def test_build_failures_raise_the_parsers_error_class() -> None:
    with pytest.raises(TransferConfigError, match=r"Cannot build optimizer SGD with \{'lr': -1\}"):
        parse_optimizer({"class_path": "sgd", "init_args": {"lr": -1}}, "o", error=TransferConfigError).build(
            nn.Linear(2, 1).parameters()
        )
    with pytest.raises(ModelConfigError, match="Cannot build scheduler LambdaLR"):
        parse_scheduler("LambdaLR", "s", error=ModelConfigError).build(_optimizer())
