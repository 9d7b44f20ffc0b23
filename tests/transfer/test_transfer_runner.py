"""Staged runs with real fits: freezing per stage, overrides, checkpoints, logs, resume, early errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transfer_tools import (  # noqa: F401
    BASE_TRAINER,
    FailInStage,
    StageSpy,
    TinyData,
    TinyRegressor,
    one_thread,
    under,
)

from finetune_strategies.errors import StageError, TransferConfigError, WeightMatchError
from finetune_strategies.transfer import TransferConfig, run_transfer_learning


@pytest.fixture
def pretrained_path(tmp_path) -> Path:
    path = tmp_path / "pretrained.pt"
    torch.save(TinyRegressor(init_seed=1).state_dict(), path)
    return path


def staged_config(pretrained_path: Path, **extra) -> dict:
    return {
        "pre_trained_model_path": str(pretrained_path),
        "modules_to_match": {"backbone": "backbone"},
        "seed": 3,
        "trainer": BASE_TRAINER,
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.5}},
        "stages": [
            {"name": "head_only", "freeze_modules": ["backbone"]},
            {
                "name": "last_layer",
                "freeze_modules": ["backbone[0:2]"],
                "optimizer": {"init_args": {"lr": 0.01}},
                "trainer": {"max_epochs": 1},
            },
            {"name": "everything", "datamodule": {"batch_size": 4}},
        ],
        **extra,
    }


def test_each_stage_is_its_own_fit_from_the_previous_weights(tmp_path, pretrained_path, caplog) -> None:
    spy = StageSpy()
    data = TinyData()
    model = TinyRegressor(init_seed=2)
    pretrained = torch.load(pretrained_path)
    caplog.set_level(logging.INFO, logger="finetune_strategies.transfer")
    result = run_transfer_learning(
        staged_config(pretrained_path), model, data, callbacks=[spy], output_dir=tmp_path / "out"
    )

    assert result.match is not None
    assert result.match.num_tensors == 4
    first, second, third = spy.fits
    for key, value in under(pretrained, "backbone"):  # stage 1 starts from the matched pretrained backbone
        assert torch.equal(first["start"][key], value)
    # stage 1: the backbone is frozen (bitwise unchanged), the head trains; lr and momentum from the base
    assert first["trainable"] == ["head.bias", "head.weight"]
    assert sorted(first["groups"][0]) == ["head.bias", "head.weight"]
    assert first["lrs"] == [0.1]
    assert first["optimizer"].defaults["momentum"] == 0.5
    for key, value in under(first["start"], "backbone"):
        assert torch.equal(first["end"][key], value)
    assert not torch.equal(first["end"]["head.weight"], first["start"]["head.weight"])
    # stage 2: from stage 1's final weights, a new optimizer, its own lr and epochs; MLatom-style range
    for key, value in first["end"].items():
        assert torch.equal(second["start"][key], value)
    assert second["optimizer"] is not first["optimizer"]
    assert second["lrs"] == [0.01]
    assert second["optimizer"].defaults["momentum"] == 0.5
    assert second["trainable"] == ["backbone.2.bias", "backbone.2.weight", "head.bias", "head.weight"]
    assert (first["epochs"], second["epochs"], third["epochs"]) == (2, 1, 2)
    for key, value in under(second["start"], "backbone.0"):
        assert torch.equal(second["end"][key], value)
    # stage 3: everything trains, with its data-module override
    assert third["trainable"] == sorted(n for n, _ in model.named_parameters())
    assert set(first["batch_sizes"]) == {8}
    assert set(third["batch_sizes"]) == {4}
    assert data.batch_size == 8  # the data module got its own value back
    assert all(p.requires_grad for p in model.parameters())  # and so did the model

    # per-stage records, checkpoints and log lines
    assert [s.frozen for s in result.stages] == [("backbone",), ("backbone.0", "backbone.1"), ()]
    total = sum(p.numel() for p in model.parameters())
    assert [s.trainable_params for s in result.stages] == [9, 72 + 9, total]
    assert all(s.total_params == total for s in result.stages)
    for stage, fit in zip(result.stages, spy.fits, strict=True):
        saved = torch.load(stage.checkpoint, weights_only=True)["state_dict"]
        assert all(torch.equal(saved[k], v) for k, v in fit["end"].items())
        assert Path(stage.checkpoint) == tmp_path / "out" / stage.name / "final.ckpt"
    assert "Matched 4 tensors" in caplog.text
    assert "Stage 1/3 'head_only': frozen backbone; training 9 of 113 parameters." in caplog.text
    assert "Stage 3/3 'everything': frozen nothing; training 113 of 113 parameters." in caplog.text
    state = json.loads((tmp_path / "out" / "transfer_state.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["head_only", "last_layer", "everything"]


def test_schedulers_per_stage_and_a_data_module_factory(tmp_path) -> None:
    spy = StageSpy()
    built: list[dict] = []

    def factory(**settings) -> TinyData:
        built.append(settings)
        return TinyData(**settings)

    config = {
        "trainer": {**BASE_TRAINER, "max_epochs": 1},
        "optimizer": {"class_path": "Adam", "init_args": {"lr": 0.01}},
        "scheduler": {"class_path": "StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
        "datamodule": {"n": 8},
        "stages": [{}, {"scheduler": None, "datamodule": {"batch_size": 2}}],
    }
    run_transfer_learning(config, TinyRegressor(), factory, callbacks=[spy], output_dir=tmp_path)
    assert built == [{"n": 8}, {"n": 8, "batch_size": 2}]
    assert [f["schedulers"] for f in spy.fits] == [["StepLR"], []]
    assert [type(f["optimizer"]).__name__ for f in spy.fits] == ["Adam", "Adam"]
    assert set(spy.fits[1]["batch_sizes"]) == {2}


def test_the_models_own_optimizer_is_used_without_a_spec(tmp_path) -> None:
    spy = StageSpy()
    config = {"trainer": {**BASE_TRAINER, "max_epochs": 1}, "stages": [{"freeze_modules": ["head"]}]}
    run_transfer_learning(config, TinyRegressor(lr=0.07), TinyData(), callbacks=[spy], output_dir=tmp_path)
    assert type(spy.fits[0]["optimizer"]).__name__ == "SGD"
    assert spy.fits[0]["lrs"] == [0.07]
    assert "head.weight" not in spy.fits[0]["groups"][0]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            {"stages": [{}, {"freeze_modules": ["backbone.9"]}]},
            TransferConfigError,
            r"stages\[1\].*no child module '9'",
        ),
        (
            {"stages": [{}, {"freeze_modules": ["backbone", "head"]}]},
            TransferConfigError,
            "freezes every parameter",
        ),
        (
            {"stages": [{}, {"datamodule": {"batchsize": 2}}]},
            TransferConfigError,
            r"has no attribute\(s\) \['batchsize'\]",
        ),
        ({"stages": [{}, {"replay": {"fraction": 0.5}}]}, TransferConfigError, "no replay data was given"),
        (
            {"modules_to_match": {"head": "backbone.0"}},
            WeightMatchError,
            r"has shape \(1, 8\) in the pretrained",
        ),
        (
            {"pre_trained_model_path": "missing.pt", "modules_to_match": None},
            FileNotFoundError,
            "does not exist",
        ),
    ],
)
def test_errors_come_before_any_training(tmp_path, pretrained_path, change, error, message) -> None:
    spy = StageSpy()
    config = {**staged_config(pretrained_path), "stages": [{}, {}], **change}
    with pytest.raises(error, match=message):
        run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path / "out")
    assert spy.fits == []
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_resumes_at_the_stage_it_was_in(tmp_path, pretrained_path, caplog) -> None:
    config = staged_config(pretrained_path)
    with pytest.raises(RuntimeError, match="interrupted in last_layer"):
        run_transfer_learning(
            config,
            TinyRegressor(init_seed=2),
            TinyData(),
            callbacks=[FailInStage("last_layer")],
            output_dir=tmp_path / "run",
        )
    state = json.loads((tmp_path / "run" / "transfer_state.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["head_only"]

    spy = StageSpy()
    caplog.set_level(logging.INFO, logger="finetune_strategies.transfer")
    resumed = run_transfer_learning(
        config, TinyRegressor(init_seed=2), TinyData(), callbacks=[spy], output_dir=tmp_path / "run"
    )
    assert [Path(f["dir"]).name for f in spy.fits] == ["last_layer", "everything"]  # stage 1 is not redone
    assert [s.reused for s in resumed.stages] == [True, False, False]
    assert "reusing finished stage(s) ['head_only']" in caplog.text
    stage_one = torch.load(resumed.stages[0].checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(spy.fits[0]["start"][k], v) for k, v in stage_one.items())

    # the same as a run that was never interrupted
    straight = run_transfer_learning(config, TinyRegressor(init_seed=2), TinyData(), output_dir=tmp_path / "straight")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key

    # a finished run does nothing on a rerun
    spy = StageSpy()
    again = run_transfer_learning(
        config, TinyRegressor(init_seed=2), TinyData(), callbacks=[spy], output_dir=tmp_path / "run"
    )
    assert spy.fits == []
    assert all(s.reused for s in again.stages)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key


def test_changed_stages_and_everything_after_them_are_redone(tmp_path, pretrained_path) -> None:
    config = staged_config(pretrained_path)
    run_transfer_learning(config, TinyRegressor(), TinyData(), output_dir=tmp_path)

    config["stages"][1]["optimizer"] = {"init_args": {"lr": 0.02}}
    spy = StageSpy()
    run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path)
    assert [Path(f["dir"]).name for f in spy.fits] == ["last_layer", "everything"]

    config["stages"][0]["trainer"] = {"max_epochs": 1}
    spy = StageSpy()
    run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path)
    assert [Path(f["dir"]).name for f in spy.fits] == ["head_only", "last_layer", "everything"]

    spy = StageSpy()
    run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path, resume=False)
    assert len(spy.fits) == 3


def test_a_stage_stopped_by_ctrl_c_is_not_recorded(tmp_path) -> None:
    class CtrlC(StageSpy):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            raise KeyboardInterrupt

    config = {"trainer": BASE_TRAINER, "stages": [{}]}
    with pytest.raises(SystemExit):  # Lightning shuts down gracefully, then exits
        run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[CtrlC()], output_dir=tmp_path)
    assert (
        not (tmp_path / "transfer_state.json").exists()
        or json.loads((tmp_path / "transfer_state.json").read_text())["stages"] == []
    )


def test_the_model_must_be_a_lightning_module(tmp_path) -> None:
    with pytest.raises(TransferConfigError, match="must be a LightningModule"):
        run_transfer_learning({"stages": [{}]}, torch.nn.Linear(1, 1), output_dir=tmp_path)  # type: ignore[arg-type]


def test_stage_error_is_a_runtime_error() -> None:
    assert issubclass(StageError, RuntimeError)


class MomentumSpy(pl.Callback):
    """The SGD momentum buffers at the first batch of each fit, and at the end of each fit."""

    def __init__(self) -> None:
        self.first: list[dict[str, torch.Tensor]] = []
        self.last: list[dict[str, torch.Tensor]] = []

    def _buffers(self, trainer, pl_module) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        state = trainer.optimizers[0].state
        return {names[id(p)]: s["momentum_buffer"].clone() for p, s in state.items() if "momentum_buffer" in s}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and len(self.first) == len(self.last):
            self.first.append(self._buffers(trainer, pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        self.last.append(self._buffers(trainer, pl_module))


def keep_state_config(pretrained_path: Path) -> dict:
    config = staged_config(pretrained_path)
    config["stages"][1]["reset_optimizer"] = False
    return config


def test_reset_optimizer_false_keeps_the_previous_stages_state(tmp_path, pretrained_path) -> None:
    spy = MomentumSpy()
    run_transfer_learning(
        keep_state_config(pretrained_path), TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path
    )
    assert spy.first[0] == {}  # a new optimizer has no state
    assert sorted(spy.first[1]) == ["head.bias", "head.weight"]  # kept from stage 1 (the head trained there)
    for name, buffer in spy.first[1].items():
        assert torch.equal(buffer, spy.last[0][name])
    assert spy.first[2] == {}  # stage 3 resets again (the default)


def test_kept_optimizer_state_survives_a_resume(tmp_path, pretrained_path) -> None:
    config = keep_state_config(pretrained_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_transfer_learning(
            config,
            TinyRegressor(),
            TinyData(),
            callbacks=[FailInStage("last_layer")],
            output_dir=tmp_path / "run",
        )
    spy = MomentumSpy()
    resumed = run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path / "run")
    straight_spy = MomentumSpy()
    straight = run_transfer_learning(
        config, TinyRegressor(), TinyData(), callbacks=[straight_spy], output_dir=tmp_path / "straight"
    )
    for name, buffer in straight_spy.first[1].items():  # rebuilt from stage 1's checkpoint, by name
        assert torch.equal(spy.first[0][name], buffer)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_kept_optimizer_state_needs_the_same_optimizer_class(pretrained_path) -> None:
    config = keep_state_config(pretrained_path)
    config["stages"][1]["optimizer"] = {"class_path": "Adam"}
    with pytest.raises(TransferConfigError, match=r"its optimizer \(Adam\) is not the previous stage's \(SGD\)"):
        TransferConfig.from_dict(config)
    config["stages"][1]["optimizer"] = {}
    config["stages"][0]["reset_optimizer"] = False
    with pytest.raises(TransferConfigError, match="first stage has no earlier optimizer state"):
        TransferConfig.from_dict(config)


def test_callback_objects_in_the_config_do_not_break_resume(tmp_path) -> None:
    def config(spy: StageSpy) -> dict:
        return {"trainer": {**BASE_TRAINER, "max_epochs": 1, "callbacks": [spy]}, "stages": [{}, {}]}

    first = StageSpy()
    run_transfer_learning(config(first), TinyRegressor(), TinyData(), output_dir=tmp_path)
    assert len(first.fits) == 2
    second = StageSpy()  # another object, as in a new process
    run_transfer_learning(config(second), TinyRegressor(), TinyData(), output_dir=tmp_path)
    assert second.fits == []


@pytest.mark.parametrize("name", ["..", "transfer_state.json"])
def test_a_stage_named_like_a_path_is_refused_before_anything_trains(tmp_path: Path, name: str) -> None:
    spy = StageSpy()
    config = {"trainer": BASE_TRAINER, "stages": [{"name": name}]}
    with pytest.raises(TransferConfigError, match="name"):
        run_transfer_learning(config, TinyRegressor(), TinyData(), callbacks=[spy], output_dir=tmp_path / "out")
    assert spy.fits == []
    assert not list(tmp_path.rglob("*.ckpt"))
