"""Every example in examples/ runs on tiny generated data, in-process."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import image_helpers  # noqa: F401  (one torch thread)
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def example(monkeypatch, tmp_path):
    """Run examples/<name>.py as __main__ with ``args``, from an empty working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name: str, *args: str) -> dict:
        monkeypatch.setattr(sys, "argv", [name, *args])
        return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")

    return run


@pytest.mark.parametrize("strategy", ["no_freeze", "freeze", "freeze_unfreeze", "unfreeze_milestones"])
def test_flash_strategies_example(example, capsys, strategy):
    example("flash_strategies", "--strategy", strategy, "--image_size", "16")
    assert f"{strategy}: val_acc" in capsys.readouterr().out


def test_custom_callback_example(example, capsys):
    namespace = example("custom_callback", "--unfreeze_epoch", "1", "--max_epochs", "2")
    assert "param groups after training: 2" in capsys.readouterr().out
    callback = namespace["FeatureExtractorFreezeUnfreeze"](unfreeze_epoch=3)
    from finetune_strategies import FlashBaseFinetuning

    assert isinstance(callback, FlashBaseFinetuning)
    assert callback.attr_names == ("backbone",)


def test_tiny_data_example(example, tmp_path):
    example("tiny_data", str(tmp_path / "tiny"), "--per_class", "3")
    assert len(list((tmp_path / "tiny" / "train").rglob("*.png"))) == 6
    assert len(list((tmp_path / "tiny" / "predict").glob("*.png"))) == 4


def test_recipes_example(example, capsys, tmp_path):
    example("recipes", "--pretrain_epochs", "1", "--epochs", "3", "--out", str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert "LPFT: what trains, epoch by epoch" in out
    assert "WiSE-FT kept a=" in out
    assert "freeze_unfreeze + l2_sp: drift after the last epoch: backbone.stem" in out
    assert (tmp_path / "out" / "drift.png").stat().st_size > 10_000


def test_any_model_example(example, capsys):
    example("any_model", "--pretrain_epochs", "1", "--epochs", "2")
    out = capsys.readouterr().out
    assert "timm ResNet at `net`: freezes `net` except its head `net.fc`" in out
    assert "torchvision ResNet (the model itself): freezes `ResNet` except its head `fc`" in out
    assert "compiled timm resnet18: timm ResNet at `_orig_mod`" in out
    assert "transformers BertForSequenceClassification (the model itself): freezes `bert`" in out
    accuracy = float(out.split("timm: val_acc ")[1].split()[0])
    assert accuracy > 0.4  # 5 classes: chance is 0.2


def test_text_classification_example(example, capsys, tmp_path):
    example("text_classification", "--epochs", "2", "--samples", "32")
    out = capsys.readouterr().out
    assert "freezes `model.bert`; the head `model.classifier` trains" in out
    assert "epoch 1: starts model.bert.pooler" in out
    assert "val_acc before fine-tuning: " in out
    assert "param groups: head lr=1.00e-02, model.bert.pooler lr=4.00e-03" in out
    example("text_classification", "--write_csv", str(tmp_path / "csv"))
    assert (tmp_path / "csv" / "reviews_train.csv").read_text() == (EXAMPLES / "data" / "reviews_train.csv").read_text()


def test_migrate_from_lightning_example(example, capsys):
    differences = example("migrate_from_lightning", "--epochs", "5")["main"]([])
    assert set(differences) == {"BackboneFinetuning", "BaseFinetuning subclass"}
    assert all(difference <= 1e-6 for difference in differences.values()), differences
    assert "max weight difference" in capsys.readouterr().out


def test_migrate_from_fts_example(example):
    epochs = example("migrate_from_fts")["main"](["--epochs", "5"])  # asserts the FTS schedule's trainable sets
    assert [len(names) for names in epochs] == [2, 2, 4, 4, 6]


def test_migrate_from_fts_example_against_fts(example):
    pytest.importorskip("finetuning_scheduler")
    example("migrate_from_fts", "--run-fts")


def test_which_layers_example(example, capsys):
    example("which_layers", "--budget_steps", "200", "--epochs", "2")
    out = capsys.readouterr().out
    assert "layer ranges: {'first': [0], 'middle': [1], 'last': [2]}" in out
    assert "strategy: {'strategy': 'surgical', 'layers': '0:1'}" in out
    assert "first: val_acc" in out
    ratios = out.split("last step's lr ratios: ")[1].splitlines()[0]
    assert "backbone.0" in ratios, "each layer its own group"
    assert "1.00" in ratios, "the largest ratio is 1"
