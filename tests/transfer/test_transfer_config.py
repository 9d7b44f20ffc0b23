"""The transfer-learning config and module selectors: parsing, merging, and errors before training."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn
from transfer_tools import TinyRegressor, one_thread  # noqa: F401

from finetune_strategies.errors import TransferConfigError
from finetune_strategies.transfer import TransferConfig, resolve_selector, resolve_selectors
from finetune_strategies.transfer.config import INHERIT

BASE = {
    "pre_trained_model_path": "weights.pt",
    "trainer": {"max_epochs": 3, "accelerator": "cpu"},
    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3, "weight_decay": 0.01}},
    "scheduler": {"class_path": "StepLR", "init_args": {"step_size": 2}},
    "datamodule": {"batch_size": 8},
    "stages": [
        {"name": "heads", "freeze_modules": ["backbone"]},
        {
            "freeze_modules": [],
            "trainer": {"max_epochs": 1},
            "optimizer": {"init_args": {"lr": 1e-4}},
            "scheduler": None,
            "datamodule": {"n": 4},
        },
        {"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}},
    ],
}


def test_stages_merge_onto_the_base() -> None:
    config = TransferConfig.from_dict(BASE)
    first, second, third = (config.stage(i) for i in range(3))
    assert [s.name for s in (first, second, third)] == ["heads", "stage_2", "stage_3"]
    assert first.trainer == {"max_epochs": 3, "accelerator": "cpu"}
    assert second.trainer == {"max_epochs": 1, "accelerator": "cpu"}
    assert first.optimizer is not None
    assert first.optimizer.cls is torch.optim.Adam
    assert first.optimizer.init_args == {"lr": 1e-3, "weight_decay": 0.01}
    # a stage's init_args merge key by key onto the base's
    assert second.optimizer is not None
    assert second.optimizer.init_args == {"lr": 1e-4, "weight_decay": 0.01}
    # another class does not inherit the base's init_args
    assert third.optimizer is not None
    assert third.optimizer.cls is torch.optim.SGD
    assert third.optimizer.init_args == {"lr": 0.1}
    assert first.scheduler is not None
    assert first.scheduler.cls is torch.optim.lr_scheduler.StepLR
    assert second.scheduler is None  # `scheduler: null` switches the base scheduler off
    assert third.scheduler is not None  # not given: the base's
    assert second.datamodule == {"batch_size": 8, "n": 4}
    assert third.datamodule == {"batch_size": 8}
    assert config.stages[2].scheduler is INHERIT


def test_yaml_json_and_dict_give_the_same_config(tmp_path) -> None:
    (tmp_path / "tl.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "tl.json").write_text(json.dumps(BASE))
    from_dict = TransferConfig.from_dict(BASE)
    assert TransferConfig.load(tmp_path / "tl.yaml") == from_dict
    assert TransferConfig.load(str(tmp_path / "tl.json")) == from_dict
    assert TransferConfig.from_dict(from_dict.to_dict()) == from_dict


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stage": []}, r"unknown key\(s\) 'stage' \(did you mean 'stages'\?\)"),
        ({"stages": []}, "non-empty list of stages"),
        ({"stages": [{"freeze": ["backbone"]}]}, r"stages\[0\]: unknown key\(s\) 'freeze'"),
        ({"trainer": {"max_epoch": 3}}, r"'max_epoch' \(did you mean 'max_epochs'\?\)"),
        ({"stages": [{"trainer": {"max_epoch": 3}}]}, r"stages\[0\] \(stage_1\)\.trainer.*'max_epoch'"),
        (
            {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"learning_rate": 1}}},
            "does not take",
        ),
        ({"optimizer": {"class_path": "torch.optim.Adamm"}}, "torch.optim has no class 'Adamm'"),
        ({"optimizer": {"class_path": "torch.nn.Linear"}}, "is not a torch.optim.Optimizer"),
        ({"optimizer": {"init_args": {"lr": 1}}}, "needs a 'class_path'"),
        ({"optimizer": None}, "a scheduler needs an optimizer"),
        ({"scheduler": {"class_path": "ReduceLROnPlateau"}}, "needs 'monitor'"),
        ({"scheduler": {"class_path": "StepLR", "interval": "batch"}}, "'epoch' or 'step'"),
        ({"stages": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"stages": [{"name": "a/b"}]}, "names the stage's folder"),
        ({"stages": [{"name": ".."}]}, "names the stage's folder"),
        ({"stages": [{"name": "."}]}, "names the stage's folder"),
        ({"stages": [{"name": ".hidden"}]}, "starting with a letter"),
        ({"stages": [{"name": "Transfer_State.json"}]}, "record file"),
        ({"stages": [{"freeze_modules": "backbone"}]}, "must be a list of module names"),
        ({"stages": [{"freeze_modules": ["net[0:x]"]}]}, r"\[0:x\] is not a position"),
        ({"stages": [{"only_new_heads": True}]}, "adds no new_heads"),
        ({"stages": [{"replay": {"fraction": 1.0}}]}, r"\[0, 1\)"),
        ({"stages": [{"replay": {"share": 0.5}}]}, "unknown key"),
        ({"modules_to_match": {}}, "non-empty mapping"),
        ({"pre_trained_model_path": None, "modules_to_match": {"a": "b"}}, "pre_trained_model_path is not"),
        ({"new_heads": {"scale_factor": -1}}, "scale_factor must be a finite number >= 0"),
        ({"new_heads": {"heads": 2}}, r"unknown key\(s\) 'heads'"),
        ({"trainer": {"callbacks": [{"class_path": "x"}]}}, "Callback instances"),
    ],
)
def test_bad_configs_are_rejected_with_the_reason(change, message) -> None:
    with pytest.raises(TransferConfigError, match=message):
        TransferConfig.from_dict({**BASE, **change})


def test_config_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransferConfig.load(tmp_path / "missing.yaml")
    (tmp_path / "tl.toml").write_text("x = 1")
    with pytest.raises(TransferConfigError, match=r"\.yaml, \.yml or \.json"):
        TransferConfig.load(tmp_path / "tl.toml")
    (tmp_path / "bad.yaml").write_text("stages: [")
    with pytest.raises(TransferConfigError, match="Cannot parse"):
        TransferConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(TransferConfigError, match="must be a TransferConfig"):
        TransferConfig.load(3)  # type: ignore[arg-type]


class Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"attn": nn.Linear(2, 2), "mlp": nn.Linear(2, 2)}) for _ in range(3)]
        )


def test_selectors_take_dotted_names_indices_and_ranges() -> None:
    model = Deep()
    assert resolve_selector(model, "net.0") == ["net.0"]  # MLatom's layer 0
    assert resolve_selector(model, "net[-1]") == ["net.4"]  # MLatom's layer 6 of a 4-layer MLP is the last
    assert resolve_selector(model, "net[0:3]") == ["net.0", "net.1", "net.2"]
    assert resolve_selector(model, "net[3:]") == ["net.3", "net.4"]
    assert resolve_selector(model, "blocks[0:2].attn") == ["blocks.0.attn", "blocks.1.attn"]
    assert resolve_selector(model, "blocks.2.mlp") == ["blocks.2.mlp"]
    # duplicates and modules inside other selected modules are dropped
    assert resolve_selectors(model, ["net.0", "net[0]", "blocks.1.attn", "blocks[1]"]) == [
        "net.0",
        "blocks.1",
    ]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("nett", r"has no child module 'nett'. Did you mean 'net'\?"),
        ("net.7", r"`net` has no child module '7'.*Its children: 0, 1, 2, 3, 4"),
        ("net[5]", "position 5 is out of range, `net` has 5 children"),
        ("net[4:2]", "selects none of the 5 children"),
        ("net..0", "cannot read ''"),
        ("net[a]", r"\[a\] is not a position"),
        ("", "non-empty string"),
    ],
)
def test_bad_selectors_name_the_problem(selector, message) -> None:
    with pytest.raises(TransferConfigError, match=message):
        resolve_selector(Deep(), selector)


def test_selectors_on_a_lightning_module() -> None:
    assert resolve_selectors(TinyRegressor(), ["backbone[0]", "backbone[-2:]", "head"]) == [
        "backbone.0",
        "backbone.2",
        "backbone.3",
        "head",
    ]
