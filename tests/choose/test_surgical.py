"""The surgical preset: what trains, by position, slice or selector; its lr; its refusals; its plan."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer

from finetune_strategies import (
    ScheduleError,
    StrategySpecError,
    StrategySpecTypeError,
    SurgicalFinetuning,
    describe_schedule,
    resolve_strategy,
)

# TinyClassifier's backbone in "blocks": 0 backbone.0 (Linear), 1 backbone.2 (BatchNorm), 2 backbone.3 (Linear)


def fit(spec: Any, epochs: int = 2, **options: Any) -> tuple[TinyClassifier, Recorder]:
    model, rec = TinyClassifier(), Recorder()
    make_trainer(epochs, callbacks=[rec]).finetune(model, loader(), strategy=spec, **options)
    return model, rec


@pytest.mark.parametrize(
    ("layers", "chosen"),
    [
        (0, ["backbone.0"]),
        (-1, ["backbone.3"]),
        ("0:1", ["backbone.0"]),
        ("-1:", ["backbone.3"]),
        ("1:", ["backbone.2", "backbone.3"]),
        (":-1", ["backbone.0", "backbone.2"]),
        ("2", ["backbone.3"]),
        (["backbone.3"], ["backbone.3"]),
        ("backbone.0", ["backbone.0"]),
        (["backbone[0]", "backbone.3"], ["backbone.0 + backbone.3"]),
    ],
)
def test_positions_slices_and_selectors(layers: Any, chosen: list[str]) -> None:
    strategy = resolve_strategy({"strategy": "surgical", "layers": layers})
    assert isinstance(strategy, SurgicalFinetuning)
    assert [layer.name for layer in strategy.chosen_layers(TinyClassifier())] == chosen


def test_only_the_chosen_layers_and_the_head_train_at_the_heads_lr() -> None:
    model, rec = fit(("surgical", {"layers": 0}), train_bn=False)
    trains = {"backbone.0.weight", "backbone.0.bias", "head.weight", "head.bias"}
    for epoch in range(2):
        assert {n for n, flag in rec.requires_grad[epoch].items() if flag} == trains
    groups = rec.groups[0]
    assert groups[0] == [id(model.head.weight), id(model.head.bias)]
    assert groups[1] == [id(model.backbone[0].weight), id(model.backbone[0].bias)]
    assert rec.group_names[0] == [None, "backbone.0"]
    assert rec.group_lrs[0] == [0.1, 0.1]  # initial_denom_lr defaults to 1.0: the head's lr
    final = model.state_dict()
    for name, before in rec.initial.items():
        changed = not torch.equal(before, final[name])
        expected = name.split(".")[0] == "head" or name.startswith("backbone.0.")
        if name.startswith("backbone.2.") and not name.endswith(("weight", "bias")):
            continue  # BatchNorm running statistics: train_bn=False leaves them updating (bn_eval=False)
        assert changed == expected, name


def test_lr_options_still_apply() -> None:
    _, rec = fit({"strategy": "surgical", "layers": "-1:", "initial_denom_lr": 10.0})
    assert rec.group_lrs[0] == pytest.approx([0.1, 0.01])
    _, rec = fit({"strategy": "surgical", "layers": "-1:", "lr": 0.02})
    assert rec.group_lrs[0] == pytest.approx([0.1, 0.02])


def test_the_phases_recipe_trains_the_same() -> None:
    surgical, _ = fit(("surgical", {"layers": 0}))
    recipe = {"strategy": "phases", "phases": [{"epoch": 0, "modules": ["backbone.0"]}], "initial_denom_lr": 1.0}
    phases, _ = fit(recipe)
    for name, value in surgical.state_dict().items():
        assert torch.equal(value, phases.state_dict()[name]), name


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        (
            3,
            ScheduleError,
            r"0: backbone\.0, 1: backbone\.2, 2: backbone\.3\): position 3 is out of range; give a position from -3",
        ),
        (-4, ScheduleError, r"position -4 is out of range"),
        (63, ScheduleError, r"YAML 1\.1 reads an unquoted 1:3 as the base-60 number 63: quote a slice in YAML, '1:3'"),
        ("1:9", ScheduleError, r"the slice '1:9' goes past the layers"),
        ("2:1", ScheduleError, r"the slice '2:1' selects no layer"),
        (["head"], ScheduleError, r"head is not inside the frozen modules"),
        (["backbone.9"], ScheduleError, r"has no child module"),
    ],
)
def test_refusals_on_the_model_come_before_training(layers: Any, error: type, message: str) -> None:
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        make_trainer(1).finetune(model, loader(), strategy={"strategy": "surgical", "layers": layers})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (("surgical", 1.5), StrategySpecTypeError, r"must be a position .* got 1\.5"),
        (("surgical", True), StrategySpecTypeError, r"must be a position"),
        (("surgical", []), StrategySpecError, r"empty list"),
        (("surgical", "0:2:1"), StrategySpecError, r"not a slice of positions"),
        (("surgical", [3]), StrategySpecTypeError, r"holds module selectors"),
        (("surgical", {"layers": 0, "train_bn": False}), StrategySpecTypeError, r"Give options in the dict form"),
        ("surgical", StrategySpecTypeError, r"needs \['layers'\]"),
    ],
)
def test_refusals_of_the_spec(spec: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_strategy(spec)


def test_describe_schedule_shows_the_chosen_layers() -> None:
    plan = describe_schedule(TinyClassifier(), ("surgical", {"layers": "-1:"}), max_epochs=2, train_bn=False)
    assert plan.strategy == "SurgicalFinetuning"
    assert plan.starts == ["backbone.3: at epoch 0"]
    assert plan.epochs[0].started == ["backbone.3"]
    assert [(g.name, g.lr) for g in plan.epochs[1].groups] == [(None, 0.1), ("backbone.3", 0.1)]
    assert [name for name, _ in plan.epochs[1].training] == ["backbone.3", "head"]


def test_deepspeed_variant_preregisters() -> None:
    strategy = resolve_strategy({"strategy": "surgical_deepspeed", "layers": 0})
    assert isinstance(strategy, SurgicalFinetuning)
    assert strategy.preregister_groups
