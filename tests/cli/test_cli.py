"""The finetune-strategies command: LightningCLI fit/predict on generated folders, dispatching, errors."""

from __future__ import annotations

import csv
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from image_helpers import cli_folders, fit_args, make_folder

from finetune_strategies import NoFreeze
from finetune_strategies.cli.app import expand_strategy_names, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.usefixtures("in_tmp_path")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cli_folders(tmp_path_factory.mktemp("cli"))


QUIET = [
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
]


def _checkpoint(root: Path) -> Path:
    (path,) = root.rglob("*.ckpt")
    return path


def _strategy_state(checkpoint: Path) -> dict:
    import torch

    state = torch.load(checkpoint, weights_only=False)
    (key,) = [k for k in state["callbacks"] if "Unfreeze" in k or "Freeze" in k]
    return key, state


def test_expand_strategy_names():
    assert expand_strategy_names(["fit", "--strategy", "freeze_unfreeze", "--strategy.unfreeze_epoch", "3"]) == [
        "fit",
        "--strategy",
        "finetune_strategies.strategies.builtins.FreezeUnfreeze",
        "--strategy.unfreeze_epoch",
        "3",
    ]
    assert expand_strategy_names(["--strategy=freeze_deepspeed"]) == [
        "--strategy",
        "finetune_strategies.strategies.builtins.Freeze",
        "--strategy.preregister_groups=true",
    ]
    unchanged = ["--strategy", "FreezeUnfreeze", "--trainer.strategy", "ddp"]
    assert expand_strategy_names(unchanged) == unchanged


def test_fit_with_flags_and_a_registered_strategy_name(data, tmp_path):
    args = fit_args(data, tmp_path, "--strategy", "freeze_unfreeze", "--strategy.unfreeze_epoch", "1")
    assert main(args) == 0
    checkpoint = _checkpoint(tmp_path)
    key, state = _strategy_state(checkpoint)
    assert key.startswith("FreezeUnfreeze")
    unfrozen = [name for name, _ in state["callbacks"][key]["unfrozen_modules"]]
    assert unfrozen
    assert all(name.startswith("backbone.") for name in unfrozen)
    assert len(state["optimizer_states"][0]["param_groups"]) == 2
    assert state["hyper_parameters"]["labels"] == ["ants", "bees"]  # linked from the data
    assert state["hyper_parameters"]["num_classes"] == 2
    config = yaml.safe_load((checkpoint.parents[1] / "config.yaml").read_text())
    assert config["strategy"]["class_path"].endswith("FreezeUnfreeze")
    assert config["strategy"]["init_args"]["unfreeze_epoch"] == 1


def test_fit_with_the_example_yaml_config(data, tmp_path):
    config = EXAMPLES / "configs" / "unfreeze_milestones.yaml"
    args = [
        "fit",
        "--config",
        str(config),
        f"--data.train_folder={data / 'train'}",
        "--model.image_size=16",
        "--trainer.max_epochs=4",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    assert main(args) == 0
    key, state = _strategy_state(_checkpoint(tmp_path))
    assert key.startswith("UnfreezeMilestones")
    assert state["callbacks"][key]["started_phases"] == [0, 1]
    assert len(state["optimizer_states"][0]["param_groups"]) == 3  # head, last 2 blocks, the rest


def test_every_example_config_parses(data, capsys):
    for config in sorted((EXAMPLES / "configs").glob("*.yaml")):
        if config.stem == "text_classification":
            continue  # the text task's: tests/text/test_text_cli.py (the lowest-versions stage has no [text])
        command = "predict" if config.stem == "predict" else "fit"
        extra = (
            [f"--data.predict_folder={data / 'predict'}"]
            if command == "predict"
            else [
                f"--data.train_folder={data / 'train'}",
                f"--data.val_folder={data / 'val'}",
                "--data.val_split=0",
            ]
        )
        assert main([command, "--config", str(config), *extra, "--print_config"]) == 0, config
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["data"]["batch_size"] in (4, 8)
        if command == "fit":
            assert printed["strategy"]["class_path"].startswith("finetune_strategies.")


def test_print_config_shows_the_default_strategy(data, capsys):
    assert main(["fit", f"--data.train_folder={data / 'train'}", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["strategy"]["class_path"] == f"finetune_strategies.{NoFreeze.__name__}"
    assert printed["model"]["backbone"] == "resnet18"
    assert "num_classes" not in printed["model"]  # derived from the data


def test_predict_writes_a_csv_and_test_reports_accuracy(data, tmp_path, capsys):
    assert main(fit_args(data, tmp_path / "fit", "--strategy", "freeze")) == 0
    checkpoint = _checkpoint(tmp_path / "fit")
    test_args = [
        "test",
        f"--ckpt_path={checkpoint}",
        f"--data.train_folder={data / 'train'}",
        f"--data.test_folder={data / 'val'}",
        *QUIET,
    ]
    assert main(test_args) == 0
    assert "test_acc" in capsys.readouterr().out
    output = tmp_path / "out" / "preds.csv"
    args = [
        "predict",
        f"--ckpt_path={_checkpoint(tmp_path / 'fit')}",
        f"--data.predict_folder={data / 'predict'}",
        f"--output={output}",
        *QUIET,
    ]
    assert main(args) == 0
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["id"]).relative_to(data / "predict").as_posix() for r in rows] == [
        "ants/0.png",
        "ants/1.png",
        "bees/0.png",
        "bees/1.png",
    ]
    assert {r["label"] for r in rows} <= {"ants", "bees"}
    for row in rows:
        probs = [float(row["p_ants"]), float(row["p_bees"])]
        assert abs(sum(probs) - 1) < 1e-4
        assert float(row["score"]) == max(probs)


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "explain", "suggest", "demo", "transfer"):
        assert f"\n  {name}" in out
    assert main([]) == 2
    assert main(["fit", "--help"]) == 0
    assert "--strategy" in capsys.readouterr().out


def test_unknown_subcommand(capsys):
    assert main(["trian"]) == 2
    assert "unknown subcommand 'trian'" in capsys.readouterr().err


def test_unknown_backbone_is_a_clean_error(data, capsys):
    assert main(["fit", "--model.backbone=resnt18", f"--data.train_folder={data / 'train'}"]) == 2
    err = capsys.readouterr().err
    assert "fit: error: Unknown backbone 'resnt18'. Did you mean: resnet18" in err
    assert "Traceback" not in err


def test_bad_strategy_option_is_a_parse_error(data, capsys):
    args = [
        "fit",
        f"--data.train_folder={data / 'train'}",
        "--strategy",
        "freeze",
        "--strategy.unfreeze_epoch=2",
    ]
    assert main(args) == 2
    assert "unfreeze_epoch" in capsys.readouterr().err


def test_missing_train_folder(tmp_path, capsys):
    assert main(["fit", f"--data.train_folder={tmp_path / 'nope'}", "--model.pretrained=false"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fit_without_training_data_says_what_to_set(data, capsys):
    args = ["fit", f"--data.predict_folder={data / 'predict'}", "--model.pretrained=false"]
    assert main(args) == 2
    assert "--data.train_folder" in capsys.readouterr().err


def test_unreadable_image_in_cli_run_is_skipped(data, tmp_path):
    train = tmp_path / "train"
    make_folder(train, per_class=3)
    (train / "ants" / "broken.png").write_text("not an image")
    args = fit_args(data, tmp_path / "out", "--trainer.max_epochs=1")
    args = [a if not a.startswith("--data.train_folder") else f"--data.train_folder={train}" for a in args]
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image\(s\) of 7"):
        assert main(args) == 0


def test_transfer_is_dispatched(monkeypatch):
    calls = []
    fake = type(sys)("finetune_strategies.cli.transfer")
    fake.transfer_main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "finetune_strategies.cli.transfer", fake)
    assert main(["transfer", "fit", "--x", "1"]) == 7
    assert calls == [["fit", "--x", "1"]]


def test_python_dash_m_runs_the_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["finetune_strategies", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("finetune_strategies", run_name="__main__")
    assert exit_.value.code == 0
    assert "demo" in capsys.readouterr().out
