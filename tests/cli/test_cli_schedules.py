"""Schedules as data from the command line: real ``fit`` runs with phases, gradual unfreezing, layer-wise
lr decay and schedule files, as flags, YAML configs and ``--strategy file.yaml``.

Each run records ``requires_grad`` per parameter and the param groups at every epoch
(``image_helpers.TrainableLog``), and the checkpoint's optimizer state names its groups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from image_helpers import BACKBONE, TrainableLog, cli_folders, fit_args
from torch import nn

from finetune_strategies.cli.app import expand_strategy_names, main
from finetune_strategies.image import ImageClassifier

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.usefixtures("in_tmp_path")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cli_folders(tmp_path_factory.mktemp("schedules"))


BLOCKS = ("backbone.conv1", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4")


def _batchnorm_parameters() -> set[str]:
    model = ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False)
    return {
        f"{name}.{param}"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for param, _ in module.named_parameters(recurse=False)
    }


BATCHNORM = _batchnorm_parameters()


def fit(data: Path, out: Path, *extra: str, epochs: int = 3) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``fit`` with ``extra`` flags; return the per-epoch log and the last checkpoint."""
    assert main(fit_args(data, out, TrainableLog.callbacks_flag(out / "log.json"), *extra, epochs=epochs)) == 0
    (checkpoint,) = out.rglob("*.ckpt")
    return TrainableLog.read(out / "log.json"), torch.load(checkpoint, weights_only=False)


def fit_example(config: str, data: Path, out: Path, epochs: int) -> dict[str, Any]:
    """Run ``fit`` on ``examples/configs/<config>`` with the test folders; return the per-epoch log."""
    args = [
        "fit",
        "--config",
        str(EXAMPLES / "configs" / config),
        f"--data.train_folder={data / 'train'}",
        f"--data.val_folder={data / 'val'}",
        "--model.image_size=16",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
        TrainableLog.callbacks_flag(out / "log.json"),
    ]
    assert main(args) == 0
    return TrainableLog.read(out / "log.json")


def training(requires_grad: dict[str, bool]) -> set[str]:
    """The blocks of :data:`BLOCKS` whose parameters all train (BatchNorm aside: ``train_bn`` decides);
    no block trains in part."""
    trained = set()
    for block in BLOCKS:
        params = [t for n, t in requires_grad.items() if n.startswith(block + ".") and n not in BATCHNORM]
        assert all(params) or not any(params), f"{block} trains in part"
        if all(params):
            trained.add(block)
    return trained


def batchnorm_trains(requires_grad: dict[str, bool]) -> list[bool]:
    return [t for n, t in requires_grad.items() if n in BATCHNORM]


def saved_groups(checkpoint: dict[str, Any]) -> list[tuple[str | None, float]]:
    return [(g.get("name"), g["lr"]) for g in checkpoint["optimizer_states"][0]["param_groups"]]


def test_phases_from_flags(data, tmp_path):
    phases = '[{"epoch": 1, "modules": ["backbone.layer4"]}, {"epoch": 2}]'
    log, checkpoint = fit(data, tmp_path, "--strategy", "phases", "--strategy.phases", phases)
    assert [training(epoch) for epoch in log["requires_grad"]] == [set(), {"backbone.layer4"}, set(BLOCKS)]
    rest = "backbone.conv1 + ... + backbone.layer3 (5 parts)"
    assert log["group_names"] == [[None], [None, "backbone.layer4"], [None, "backbone.layer4", rest]]
    assert saved_groups(checkpoint) == [(None, 0.001), ("backbone.layer4", pytest.approx(1e-4)), (rest, 1e-4)]
    assert checkpoint["callbacks"]["Phases"]["started_phases"] == [0, 1]


def test_phases_from_the_example_config(data, tmp_path):
    """examples/configs/phases.yaml: named phases with their own lr, under a cosine schedule."""
    log = fit_example("phases.yaml", data, tmp_path, epochs=4)
    assert log["group_names"] == [[None], [None, "top"], [None, "top"], [None, "top", "rest"]]
    assert [training(epoch) for epoch in log["requires_grad"]] == [
        set(),
        {"backbone.layer4"},
        {"backbone.layer4"},
        set(BLOCKS),
    ]
    assert not any(batchnorm_trains(log["requires_grad"][3]))  # train_bn: false, also in unfrozen blocks
    base, top = ([lrs[i] for lrs in log["group_lrs"][1:]] for i in (0, 1))
    assert base[0] < 0.003  # the model's cosine schedule, stepped once
    assert top[0] == pytest.approx(0.001)  # the phase's own lr ...
    assert [t / b for t, b in zip(top, base, strict=True)] == pytest.approx(
        [top[0] / base[0]] * 3
    )  # ... then follows group 0
    assert log["group_lrs"][3][2] == pytest.approx(base[2] / 10)  # no lr: group 0's over initial_denom_lr


def test_gradual_unfreeze_with_layer_lr_decay_from_flags(data, tmp_path):
    flags = ["--strategy", "gradual_unfreeze", "--strategy.start_epoch", "2", "--strategy.layer_lr_decay", "0.5"]
    log, checkpoint = fit(data, tmp_path, *flags, "--strategy.layers_per_step", "2", epochs=4)
    assert [training(epoch) for epoch in log["requires_grad"]] == [
        set(),
        set(),
        {"backbone.layer3", "backbone.layer4"},
        {"backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4"},
    ]
    groups = dict(saved_groups(checkpoint))  # one group per layer, the lr halving from the top layer down
    assert groups == {None: 0.001, **{f"backbone.layer{4 - k}": pytest.approx(1e-4 * 0.5**k) for k in range(4)}}
    assert [len(names) for names in log["group_names"]] == [1, 1, 3, 5]


def test_gradual_unfreeze_from_the_example_config(data, tmp_path):
    log = fit_example("gradual_unfreeze.yaml", data, tmp_path, epochs=3)
    assert [training(epoch) for epoch in log["requires_grad"]] == [
        set(),
        {"backbone.layer4"},
        {"backbone.layer3", "backbone.layer4"},
    ]
    assert log["group_names"][2] == [None, "backbone.layer4", "backbone.layer3"]
    assert log["group_lrs"][2][2] / log["group_lrs"][2][1] == pytest.approx(0.5)


def test_layer_lr_decay_for_any_strategy(data, tmp_path):
    flags = ["--strategy", "freeze_unfreeze", "--strategy.unfreeze_epoch", "1", "--strategy.layer_lr_decay", "0.75"]
    log, checkpoint = fit(data, tmp_path, *flags, epochs=2)
    assert [training(epoch) for epoch in log["requires_grad"]] == [set(), set(BLOCKS)]
    layers = ["backbone.layer4", "backbone.layer3", "backbone.layer2", "backbone.layer1", "backbone.stem"]
    assert dict(saved_groups(checkpoint)) == {
        None: 0.001,
        **{n: pytest.approx(1e-4 * 0.75**k) for k, n in enumerate(layers)},
    }


def test_schedule_file_with_an_overriding_flag(data, tmp_path):
    """``--strategy file.yaml`` holds the dict form; a later ``--strategy.<option>`` overrides the file."""
    schedule = EXAMPLES / "schedules" / "top_then_rest.yaml"
    log, checkpoint = fit(data, tmp_path, "--strategy", str(schedule), "--strategy.train_bn=true")
    assert [training(epoch) for epoch in log["requires_grad"]] == [set(), {"backbone.layer4"}, set(BLOCKS)]
    assert all(batchnorm_trains(log["requires_grad"][0]))  # train_bn from the flag, over the file's false
    assert [name for name, _ in saved_groups(checkpoint)][:2] == [None, "backbone.layer4"]
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())["strategy"]
    assert saved["class_path"] == "finetune_strategies.strategies.builtins.Phases"
    assert saved["init_args"]["phases"][0] == {"epoch": 1, "modules": ["backbone.layer4"], "name": "top"}
    assert saved["init_args"]["train_bn"] is True
    assert saved["init_args"]["layer_lr_decay"] == 0.5


def test_a_bad_selector_stops_fit_before_training(data, tmp_path, capsys):
    args = [
        "fit",
        f"--model.backbone={BACKBONE}",
        "--model.pretrained=false",
        f"--data.train_folder={data / 'train'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--strategy=phases",
        '--strategy.phases=[{"epoch": 1, "modules": ["backbone.layer9"]}]',
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "fit: error: phases[0] (backbone.layer9): Module selector 'backbone.layer9'" in err
    assert "Did you mean 'layer4'?" in err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_expand_a_schedule_file(tmp_path):
    schedule = tmp_path / "s.json"
    schedule.write_text(json.dumps({"strategy": "phases_deepspeed", "phases": [{"epoch": 1}], "train_bn": False}))
    flag, value = expand_strategy_names([f"--strategy={schedule}"])
    assert flag == "--strategy"
    assert json.loads(value) == {
        "class_path": "finetune_strategies.strategies.builtins.Phases",
        "init_args": {"phases": [{"epoch": 1}], "train_bn": False, "preregister_groups": True},
    }
