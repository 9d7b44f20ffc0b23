"""New read-out heads summed with the pretrained head, with real fits through the runner."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from transfer_tools import BASE_TRAINER, StageSpy, TinyData, TinyRegressor, one_thread, under, weights  # noqa: F401

from finetune_strategies.errors import TransferConfigError
from finetune_strategies.transfer import (
    SummedHeads,
    add_readout_heads,
    modules_outside,
    run_transfer_learning,
)

X = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))


def test_new_heads_are_summed_with_the_pretrained_head() -> None:
    model = TinyRegressor()
    pretrained_head = model.head
    names = add_readout_heads(model, "head", num_heads=2, seed=0)
    assert names == ["head.new.0", "head.new.1"]
    assert isinstance(model.head, SummedHeads)
    assert model.head.pretrained is pretrained_head
    features = model.backbone(X)
    expected = pretrained_head(features) + model.head.new[0](features) + model.head.new[1](features)
    assert torch.allclose(model(X), expected.squeeze(-1))
    # more heads can be appended later, as mlip fine-tunes a model that already has several
    assert add_readout_heads(model, "head", seed=1) == ["head.new.2"]


def test_scale_factor_zero_starts_at_the_pretrained_output() -> None:
    model = TinyRegressor()
    before = model(X).detach()
    add_readout_heads(model, "head", num_heads=3, scale_factor=0.0)
    assert torch.equal(model(X).detach(), before)
    assert all(torch.count_nonzero(p) == 0 for p in model.head.new.parameters())


def test_scale_factor_rescales_a_random_initialisation() -> None:
    full, small = TinyRegressor(), TinyRegressor()
    add_readout_heads(full, "head", scale_factor=1.0, seed=7)
    add_readout_heads(small, "head", seed=7)  # default 0.1
    for big, little in zip(full.head.new[0].parameters(), small.head.new[0].parameters(), strict=True):
        assert torch.allclose(little, 0.1 * big)
        assert torch.count_nonzero(big) > 0
    # the new head is a fresh draw, not a copy of the pretrained weights
    assert not torch.allclose(full.head.new[0].weight, full.head.pretrained.weight)


def test_bad_heads_are_rejected() -> None:
    with pytest.raises(TransferConfigError, match=r"no module 'haed'.*Did you mean 'head'"):
        add_readout_heads(TinyRegressor(), "haed")
    with pytest.raises(TransferConfigError, match="num_heads must be an int >= 1"):
        add_readout_heads(TinyRegressor(), "head", num_heads=0)
    with pytest.raises(TransferConfigError, match="scale_factor must be a finite number >= 0"):
        add_readout_heads(TinyRegressor(), "head", scale_factor=float("nan"))

    class NoReset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    model = TinyRegressor()
    model.head = NoReset()
    with pytest.raises(TransferConfigError, match=r"\['NoReset'\] own parameters but have no reset_parameters"):
        add_readout_heads(model, "head")


def test_modules_outside_covers_everything_but_the_kept_modules() -> None:
    model = TinyRegressor()
    names = add_readout_heads(model, "head", num_heads=2)
    assert modules_outside(model, names) == ["backbone", "head.pretrained"]
    assert modules_outside(model, ["backbone.2"]) == ["backbone.0", "head"]


def test_training_only_the_new_heads_leaves_pretrained_weights_bitwise_unchanged(tmp_path) -> None:
    pretrained = TinyRegressor(init_seed=1)
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")
    spy = StageSpy()
    config = {
        "pre_trained_model_path": str(tmp_path / "pretrained.pt"),
        "new_heads": {"head": "head", "num_heads": 2, "train_only_new_heads": True, "seed": 0},
        "trainer": BASE_TRAINER,
        "optimizer": {"class_path": "SGD", "init_args": {"lr": 0.1}},
        "stages": [{"name": "heads"}, {"name": "all", "only_new_heads": False, "trainer": {"max_epochs": 1}}],
    }
    result = run_transfer_learning(
        config, TinyRegressor(init_seed=2), TinyData(offset=1.0), callbacks=[spy], output_dir=tmp_path / "out"
    )
    assert result.new_head_names == ["head.new.0", "head.new.1"]
    heads, everything = spy.fits
    new_param_names = sorted(n for n, _ in result.model.named_parameters() if n.startswith("head.new."))
    assert heads["trainable"] == new_param_names
    assert sorted(heads["groups"][0]) == new_param_names  # the optimizer holds exactly the new heads
    assert result.stages[0].frozen == ("backbone", "head.pretrained")
    assert result.stages[0].trainable_params == 2 * (8 + 1)

    start, end = heads["start"], heads["end"]
    original = pretrained.state_dict()
    for key, value in original.items():  # pretrained tensors moved from head.* to head.pretrained.*
        moved = key.replace("head.", "head.pretrained.")
        assert torch.equal(start[moved], value), key
        assert torch.equal(end[moved], value), key
    for key in start:
        if key.startswith("head.new."):
            assert not torch.equal(start[key], end[key]), key
    # stage 2 trains everything, from stage 1's final weights
    assert everything["trainable"] == sorted(n for n, _ in result.model.named_parameters())
    for key, value in end.items():
        assert torch.equal(everything["start"][key], value)
    assert not torch.equal(everything["end"]["backbone.0.weight"], original["backbone.0.weight"])


def test_scale_factor_zero_through_the_runner_starts_at_the_pretrained_output(tmp_path) -> None:
    pretrained = TinyRegressor(init_seed=1)
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")
    outputs: list[torch.Tensor] = []

    class FirstOutput(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            outputs.append(pl_module(X).detach())

    config = {
        "pre_trained_model_path": str(tmp_path / "pretrained.pt"),
        "new_heads": {"scale_factor": 0.0, "train_only_new_heads": True},
        "trainer": {**BASE_TRAINER, "max_epochs": 1},
        "stages": [{}],
    }
    run_transfer_learning(
        config, TinyRegressor(init_seed=2), TinyData(), callbacks=[FirstOutput()], output_dir=tmp_path / "o"
    )
    assert torch.equal(outputs[0], pretrained(X).detach())
