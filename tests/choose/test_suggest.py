"""suggest_layers: the candidates, the probes, the choice, the evidence, the refusals, and the CLI command."""

from __future__ import annotations

import random
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import yaml
from choose_helpers import QUIET, InputShiftNet, ShiftData, TrainOnly
from conftest import TinyClassifier

from finetune_strategies import (
    Candidate,
    ConfigurationError,
    ScheduleError,
    Trainer,
    default_candidates,
    layer_ranges,
    resolve_strategy,
    suggest_layers,
)
from finetune_strategies.choose.candidates import parse_candidates
from finetune_strategies.choose.suggest import CandidateResult, _best


def suggest(model: Any = None, data: Any = None, **kwargs: Any) -> Any:
    kwargs = {"budget_steps": 100, "trainer_kwargs": QUIET, **kwargs}
    return suggest_layers(model or InputShiftNet(), data or ShiftData(), **kwargs)


@pytest.fixture(scope="module")
def suggestion() -> Any:
    # "all" tunes the first block too, so it can fit as well (with more parameters); a near-tie goes to "first"
    return suggest_layers(InputShiftNet(), ShiftData(), budget_steps=200, tolerance=0.05, trainer_kwargs=QUIET)


def test_ranges_split_as_array_split() -> None:
    model = InputShiftNet()
    assert layer_ranges(model) == {"first": [0], "middle": [1], "last": [2]}
    assert layer_ranges(model, {"layer_unit": "flash_leaves"}) == {"first": [0, 1], "middle": [2, 3], "last": [4, 5]}
    assert layer_ranges(TinyClassifier(), {"layer_unit": "param_modules"}) == {"first": [0], "middle": [1], "last": [2]}
    names = [(c.name, c.layers, c.full) for c in default_candidates(model)]
    assert names == [("freeze", None, False), ("first", "0:1", False), ("middle", "1:2", False),
                     ("last", "2:3", False), ("all", None, True)]  # fmt: skip


@pytest.mark.parametrize(("count", "expected"), [(5, [[0, 1], [2, 3], [4]]), (2, [[0], [1]]), (1, [[0]])])
def test_ranges_of_n_layers(count: int, expected: list[list[int]]) -> None:
    model = TinyClassifier()
    model.backbone = torch.nn.Sequential(*[torch.nn.Linear(8 if i else 4, 8) for i in range(count)])
    ranges = layer_ranges(model)
    assert list(ranges.values()) == expected
    assert list(ranges) == {5: ["first", "middle", "last"], 2: ["first", "last"], 1: ["first"]}[count]


def test_picks_the_only_range_that_can_help(suggestion: Any) -> None:
    assert suggestion.choice == "first"
    assert suggestion.strategy == {"strategy": "surgical", "layers": "0:1"}
    assert suggestion.phases == [{"epoch": 0, "modules": ["backbone.0"]}]
    scores = {r.name: r.score for r in suggestion.evidence.candidates}
    assert scores["first"] < 0.5 * min(scores["freeze"], scores["middle"], scores["last"])
    assert [r.trainable_params for r in suggestion.evidence.candidates] == [10, 30, 30, 30, 70]
    rgn = {g.name: g.rgn for g in suggestion.evidence.relative_gradient_norms}
    assert list(rgn) == ["backbone.0", "backbone.2", "backbone.4", "head (and the rest)"]
    assert all(value > 0 for value in rgn.values())


def test_the_chosen_spec_and_phases_train(suggestion: Any) -> None:
    data = ShiftData()
    for spec in (suggestion.strategy, suggestion.phases_strategy):
        model = InputShiftNet()
        trainer = Trainer(max_epochs=3, **QUIET, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.finetune(model, data, strategy=spec)
        assert trainer.callback_metrics["val_loss"] < 0.3
        assert not model.backbone[2].weight.requires_grad
    assert resolve_strategy(yaml.safe_load(yaml.safe_dump(suggestion.to_dict()["strategy"])))


def test_budget_accounting(suggestion: Any) -> None:
    assert suggestion.budget_steps == 200
    assert suggestion.steps_per_candidate == 40
    assert [r.steps for r in suggestion.evidence.candidates] == [40] * 5
    assert sum(r.steps for r in suggestion.evidence.candidates) <= suggestion.budget_steps


def test_evidence_is_printed_and_plain_data(suggestion: Any) -> None:
    text = str(suggestion)
    assert "first: val_loss=" in text
    assert "<- chosen" in text
    assert "budget 200" in text
    data = suggestion.to_dict()
    assert data["choice"] == "first"
    assert [c["name"] for c in data["evidence"]["candidates"]] == ["freeze", "first", "middle", "last", "all"]
    yaml.safe_dump(data)  # plain data


def test_model_unchanged_test_split_unread_and_deterministic() -> None:
    model, data = InputShiftNet(), ShiftData()
    model.backbone[0].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    first = suggest(model, data, budget_steps=25)  # ShiftData's test and predict loaders raise
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model._trainer is None
    assert set(data.read) == {"train", "val"}
    assert random.getstate() == rng[0]
    assert (np.random.get_state()[1] == rng[1]).all()
    assert torch.equal(torch.get_rng_state(), rng[2])
    second = suggest(model, ShiftData(), budget_steps=25)
    assert first.to_dict() == second.to_dict()


def test_ties_go_to_fewer_parameters() -> None:
    def result(name: str, params: int, score: float) -> CandidateResult:
        return CandidateResult(name, {"strategy": "freeze"}, [], params, 1, score)

    results = [result("all", 70, 0.50), result("first", 30, 0.52), result("freeze", 10, 0.9)]
    assert _best(results, "min", 0.0).name == "all"
    assert _best(results, "min", 0.05).name == "first"
    assert _best([result("a", 30, 0.5), result("b", 10, 0.5)], "min", 0.0).name == "b"
    assert _best([result("a", 30, 0.9), result("b", 10, float("nan"))], "max", 0.0).name == "a"


def test_custom_candidates() -> None:
    parsed = parse_candidates(["freeze", 0, "-1:", ["backbone.2"], "no_freeze"])
    assert [(c.name, c.strategy_name) for c in parsed] == [
        ("freeze", "freeze"),
        ("layers 0", "surgical"),
        ("layers -1:", "surgical"),
        ("backbone.2", "surgical"),
        ("all", "no_freeze"),
    ]
    named = suggest(candidates={"bottom": 0, "top": ["backbone.4"]}, budget_steps=20, options={"train_bn": False})
    assert named.choice == "bottom"
    assert named.strategy == {"strategy": "surgical", "layers": 0, "train_bn": False}
    assert [r.steps for r in named.evidence.candidates] == [10, 10]
    assert parse_candidates([Candidate("mine", "0:2")])[0].name == "mine"


@pytest.mark.parametrize(
    ("kwargs", "data", "error", "message"),
    [
        ({"budget_steps": 4}, None, ConfigurationError, r"budget_steps=4 is less than one optimizer step"),
        ({}, TrainOnly(), ConfigurationError, r"TrainOnly has no val_dataloader"),
        ({"monitor": "val_los"}, None, ConfigurationError, r"'val_los' is not logged.*logs \['val_acc', 'val_loss'\]"),
        ({"mode": "lowest"}, None, ConfigurationError, r"`mode` must be 'min' or 'max'"),
        ({"candidates": [5]}, None, ScheduleError, r"position 5 is out of range"),
        ({"candidates": ["0:1", "0:1"]}, None, Exception, r"more than once"),
        ({"trainer_kwargs": {"max_epochs": 3}}, None, ConfigurationError, r"\['max_epochs'\]: the probes set"),
        ({"options": {"train_bnn": False}}, None, TypeError, r"does not take \['train_bnn'\]"),
    ],
)  # fmt: skip
def test_refusals_before_probing(kwargs: dict[str, Any], data: Any, error: type, message: str) -> None:
    data = data or ShiftData()
    with pytest.raises(error, match=message):
        suggest(data=data, **kwargs)
    assert getattr(data, "read", []) in ([], ["val"])  # the monitor check validates once; nothing trains


class CosineNet(InputShiftNet):
    """Its cosine schedule takes its period from the trainer's max_epochs, as the tasks' "cosine" does."""

    periods: ClassVar[list[int]] = []

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(f"max_epochs is {epochs}: a cosine schedule has no period")
        CosineNet.periods.append(epochs)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)}


def test_probes_tell_a_scheduler_the_epochs_their_steps_span() -> None:
    CosineNet.periods = []
    result = suggest(CosineNet(), ShiftData(n=256, batch_size=32), budget_steps=100)
    assert result.steps_per_candidate == 20
    # the gradient step (one epoch), then 20 steps of 8 batches per epoch: 3 epochs for each of 5 probes
    assert CosineNet.periods == [1] + [3] * 5
    assert all(r.steps == 20 for r in result.evidence.candidates)
