"""`finetune-strategies transfer --config tl.yaml`, run in process through transfer_main."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from transfer_tools import BASE_TRAINER, TinyRegressor, one_thread  # noqa: F401

from finetune_strategies.transfer import transfer_main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write_config(tmp_path: Path, **transfer) -> Path:
    torch.save(TinyRegressor(init_seed=1).state_dict(), tmp_path / "pretrained.pt")
    config = {
        "model": {"class_path": "transfer_tools.TinyRegressor", "init_args": {"init_seed": 2}},
        "data": {"class_path": "transfer_tools.TinyData", "init_args": {"n": 16}},
        "transfer": {
            "pre_trained_model_path": str(tmp_path / "pretrained.pt"),
            "output_dir": str(tmp_path / "out"),
            "trainer": {**BASE_TRAINER, "max_epochs": 1},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
            "stages": [
                {"name": "frozen", "freeze_modules": ["backbone"]},
                {"name": "small_batches", "datamodule": {"batch_size": 4}},
            ],
            **transfer,
        },
    }
    path = tmp_path / "tl.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_runs_the_stages_and_resumes(tmp_path, capsys) -> None:
    config = write_config(tmp_path)
    assert transfer_main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "frozen: trained; frozen backbone; 9 of 113 parameters trained" in out
    assert "small_batches: trained; frozen nothing; 113 of 113 parameters trained" in out
    state = json.loads((tmp_path / "out" / "transfer_state.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["frozen", "small_batches"]

    assert transfer_main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "frozen: reused" in out
    assert "small_batches: reused" in out

    assert transfer_main(["--config", str(config), "--resume", "false", "--output_dir", str(tmp_path / "o2")]) == 0
    assert (tmp_path / "o2" / "small_batches" / "final.ckpt").is_file()


def test_cli_reads_the_transfer_section_from_its_own_file(tmp_path) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    (tmp_path / "transfer.json").write_text(json.dumps(config.pop("transfer")))
    config["transfer"] = str(tmp_path / "transfer.json")
    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(config))
    assert transfer_main(["--config", str(tmp_path / "cli.yaml")]) == 0
    assert (tmp_path / "out" / "frozen" / "final.ckpt").is_file()


@pytest.mark.parametrize(
    ("transfer", "message", "status"),
    [
        ({"stages": [{"freeze_modules": ["backbone.7"]}]}, r"`backbone` has no child module '7'", 2),
        ({"stages": [{"datamodule": {"batch": 4}}]}, "do not fit `data`", 2),
        ({"modules_to_match": {"head": "backbone.0"}}, r"has shape \(1, 8\) in the pretrained weights", 1),
        ({"stagez": []}, "did you mean 'stages'", 2),
    ],
)
def test_cli_reports_config_errors_before_training(tmp_path, capsys, transfer, message, status) -> None:
    """Config errors are usage errors (2); weights that do not fit the model are a failed run (1)."""
    config = write_config(tmp_path, **transfer)
    assert transfer_main(["--config", str(config)]) == status
    err = capsys.readouterr().err
    assert re.search(f"finetune-strategies transfer: error: .*{message}", err, re.DOTALL)
    assert not (tmp_path / "out").exists()


def test_cli_rejects_bad_arguments_and_helps(tmp_path, capsys) -> None:
    config = write_config(tmp_path)
    assert transfer_main(["--config", str(config), "--model.init_args.widht", "3"]) == 2
    assert "widht" in capsys.readouterr().err
    assert transfer_main(["--help"]) == 0
    assert "--transfer TRANSFER" in capsys.readouterr().out
    assert transfer_main(["--config", str(config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "transfer_tools.TinyRegressor"


def test_cli_runs_the_example_config(tmp_path, monkeypatch, capsys) -> None:
    """The shipped example config with its committed pretrained weights, shortened to a few epochs."""
    config = yaml.safe_load((EXAMPLES / "transfer_regression.yaml").read_text())
    transfer = config["transfer"]
    transfer["output_dir"] = str(tmp_path / "out")
    transfer["trainer"].update(max_epochs=3, logger=False)
    for stage in transfer["stages"]:
        stage.get("trainer", {}).pop("max_epochs", None)
    monkeypatch.chdir(EXAMPLES.parent)  # the config's paths are relative to the repository root
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    assert transfer_main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fix_first_last: trained; frozen net.0, net.4; 1,056 of 1,153 parameters trained" in out
    assert "all_layers: trained; frozen nothing; 1,153 of 1,153 parameters trained" in out
