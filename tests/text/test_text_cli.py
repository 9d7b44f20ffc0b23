"""The command line on the text task: the example YAML config, flags, predict, explain and --export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from text_helpers import TINY_BERT
from transformers import AutoModelForSequenceClassification

from finetune_strategies.cli.app import main, names_classes

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "configs" / "text_classification.yaml"
DATA = ROOT / "examples" / "data"
FILES = [
    f"--data.init_args.train_file={DATA / 'reviews_train.csv'}",
    f"--data.init_args.val_file={DATA / 'reviews_val.csv'}",
    f"--data.init_args.predict_file={DATA / 'reviews_predict.csv'}",
]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
pytestmark = pytest.mark.usefixtures("in_tmp_path")


def test_the_example_config_fits_links_the_labels_and_exports_a_folder(tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(CONFIG), *FILES, *QUIET, "--trainer.max_epochs=3", "--export", "exported"]
    assert main(args) == 0
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    state = torch.load(checkpoint, weights_only=False)
    assert state["hyper_parameters"]["num_labels"] == 2  # from the data
    assert state["hyper_parameters"]["labels"] == ["negative", "positive"]
    (key,) = [k for k in state["callbacks"] if k.startswith("GradualUnfreeze")]
    assert state["callbacks"][key]["started_phases"] == [0, 1]
    groups = state["optimizer_states"][0]["param_groups"]
    assert [g.get("name") for g in groups] == [None, "model.bert.pooler", "model.bert.encoder.layer.1"]
    assert [g["lr"] for g in groups[1:]] == [0.004, 0.002]
    config = yaml.safe_load((checkpoint.parents[1] / "config.yaml").read_text())
    assert config["model"]["class_path"] == "finetune_strategies.text.TextClassifier"
    assert "Model and tokenizer written to exported" in capsys.readouterr().out
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")
    assert exported.config.id2label == {0: "negative", 1: "positive"}
    assert (tmp_path / "exported" / "tokenizer.json").is_file()

    output = tmp_path / "predictions.csv"
    predict = ["predict", f"--ckpt_path={checkpoint}", "--model=TextClassifier", "--data=TextClassificationData"]
    # the same training texts rebuild the same tokenizer
    assert main([*predict, *FILES, f"--output={output}", *QUIET]) == 0
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == [str(i) for i in range(6)]
    for row in rows:
        assert row["label"] in ("negative", "positive")
        assert abs(float(row["p_negative"]) + float(row["p_positive"]) - 1) < 1e-5


def test_fit_with_flags_only(tmp_path: Path) -> None:
    args = [
        "fit",
        "--model",
        "TextClassifier",
        f"--model.backbone={json.dumps(TINY_BERT)}",
        "--model.lr=0.01",
        "--data",
        "TextClassificationData",
        f"--data.train_file={DATA / 'reviews_train.csv'}",
        "--data.val_split=0.25",
        "--data.batch_size=8",
        "--strategy",
        "freeze_unfreeze",
        "--strategy.unfreeze_epoch=1",
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        *QUIET,
    ]
    assert main(args) == 0
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    state = torch.load(checkpoint, weights_only=False)
    (key,) = [k for k in state["callbacks"] if k.startswith("FreezeUnfreeze")]
    assert {name.split(".")[1] for name, _ in state["callbacks"][key]["unfrozen_modules"]} == {"bert"}
    assert len(state["optimizer_states"][0]["param_groups"]) == 2


def test_explain_takes_the_classes_from_the_texts(capsys) -> None:
    args = ["explain", "--config", str(CONFIG), *FILES, "--trainer.max_epochs=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("model.bert.pooler", "model.bert.encoder.layer.1", "0.004", "0.002"):
        assert name in out


def test_a_text_model_refuses_an_export_file_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    args = ["fit", "--config", str(CONFIG), *FILES, *QUIET, "--export", str(tmp_path / "model.safetensors")]
    assert main(args) == 2
    assert "TextClassifier writes a folder there" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_which_command_lines_name_their_classes(tmp_path: Path) -> None:
    image_config = ROOT / "examples" / "configs" / "freeze_unfreeze.yaml"
    nested = tmp_path / "nested.yaml"
    nested.write_text("fit:\n  model:\n    class_path: TextClassifier\n")
    assert names_classes(["--config", str(CONFIG)])
    assert names_classes([f"--config={nested}"])
    assert names_classes(["--model=TextClassifier"])
    assert names_classes(["--data", "TextClassificationData"])
    assert not names_classes(["--config", str(image_config), "--model.backbone=resnet18"])
    assert not names_classes(["--config", str(tmp_path / "missing.yaml")])
