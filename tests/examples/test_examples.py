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
