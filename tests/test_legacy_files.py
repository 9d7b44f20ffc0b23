"""Files that 0.1 wrote (tests/fixtures/v0_1, made by its make_files.py before the subpackages) still work: a
pickled checkpoint naming 0.1's module paths resumes, and CLI configs naming them run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from conftest import QUIET_TRAINER
from image_helpers import TrainableLog, cli_folders

from finetune_strategies import CheckpointError, FreezeUnfreeze, Lora, Phases, PhaseSpec, Trainer
from finetune_strategies.cli import main

FIXTURES = Path(__file__).with_name("fixtures") / "v0_1"


def v01_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("v01_make_files", FIXTURES / "make_files.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pickled_0_1_checkpoint_unpickles_to_todays_classes():
    checkpoint = torch.load(FIXTURES / "freeze_unfreeze.ckpt", weights_only=False)
    hyperparameters = checkpoint["hyper_parameters"]
    assert hyperparameters["strategy_class"] is FreezeUnfreeze
    assert hyperparameters["adapter_class"] is Lora
    assert hyperparameters["schedule"] == [PhaseSpec(epoch=1, modules=("backbone",))]
    assert type(hyperparameters["schedule"][0]) is PhaseSpec


def test_a_0_1_checkpoint_resumes_where_it_stopped():
    script = v01_script()
    written = torch.load(FIXTURES / "freeze_unfreeze.ckpt", weights_only=False)
    model = script.V01Net(**written["hyper_parameters"])
    trainer = Trainer(max_epochs=3, **QUIET_TRAINER)
    trainer.finetune(
        model,
        script.data(),
        strategy=("freeze_unfreeze", 1),
        ckpt_path=FIXTURES / "freeze_unfreeze.ckpt",
        weights_only=False,
    )
    assert trainer.current_epoch == 3  # epochs 0 and 1 ran under 0.1, epoch 2 here
    resumed = model.state_dict()
    assert all(p.requires_grad for p in model.parameters())  # the backbone was unfrozen in 0.1's epoch 1
    moved = [name for name, value in written["state_dict"].items() if not torch.equal(value, resumed[name])]
    assert sorted(moved) == sorted(resumed)  # every weight trained on in epoch 2, backbone included


def test_a_0_1_checkpoint_with_pickled_classes_needs_consent():
    script = v01_script()
    model = script.V01Net()
    trainer = Trainer(max_epochs=3, **QUIET_TRAINER)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        trainer.finetune(
            model, script.data(), strategy=("freeze_unfreeze", 1), ckpt_path=FIXTURES / "freeze_unfreeze.ckpt"
        )


@pytest.mark.parametrize("config", ["cli_config.yaml", "module_paths.yaml"])
def test_a_0_1_cli_config_runs(config, tmp_path):
    data = cli_folders(tmp_path / "data")
    strategy = yaml.safe_load((FIXTURES / config).read_text())["strategy"]
    assert strategy["class_path"] in ("finetune_strategies.Phases", "finetune_strategies.strategies.Phases")
    code = main(
        [
            "fit",
            f"--config={FIXTURES / config}",
            f"--data.train_folder={data / 'train'}",
            f"--data.val_folder={data / 'val'}",
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={tmp_path / 'out'}",
            "--trainer.enable_model_summary=false",
            TrainableLog.callbacks_flag(tmp_path / "log.json"),
        ]
    )
    assert code == 0
    epochs = TrainableLog.read(tmp_path / "log.json")["requires_grad"]
    top = [name for name in epochs[0] if name.startswith("backbone.layer4.") and ".conv" in name]  # BN stays frozen
    assert top
    assert not any(epochs[0][name] for name in top)
    assert all(epochs[1][name] for name in top)
    assert not epochs[1]["backbone.conv1.0.weight"]  # the rest at epoch 3
    saved = yaml.safe_load(next((tmp_path / "out").rglob("config.yaml")).read_text())
    resolved = saved["strategy"]["class_path"]
    module, _, name = resolved.rpartition(".")
    assert getattr(importlib.import_module(module), name) is Phases
    assert json.dumps(saved["strategy"]["init_args"]["phases"][0]["modules"]) == '["backbone.layer4"]'
