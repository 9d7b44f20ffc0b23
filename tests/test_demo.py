"""The built-in demo, run for real with tiny settings through the command's entry point."""

from __future__ import annotations

import json

import image_helpers  # noqa: F401  (one torch thread)
from PIL import Image

from finetune_strategies.cli import main
from finetune_strategies.demo import DemoSettings
from finetune_strategies.demo.command import demo_parser, settings_from

TINY = ["--epochs=3", "--pretrain_epochs=1", "--shots=2", "--val_per_class=4", "--seeds=[0, 1]"]


def test_demo_prints_the_table_and_saves_plot_and_results(tmp_path, capsys):
    assert main(["demo", "--fast", f"--output={tmp_path}", *TINY]) == 0
    out = capsys.readouterr().out
    for name in ("no_freeze", "freeze", "freeze_unfreeze", "unfreeze_milestones", "from scratch"):
        assert name in out
    assert "Trainable params per phase" in out
    assert "mean ± std over 2 seeds" in out
    with Image.open(tmp_path / "val_accuracy.png") as plot:
        assert plot.format == "PNG"
        assert plot.size[0] > 800
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "table.txt").read_text().count("freeze_unfreeze") == 1
    runs = {(r["name"], r["seed"]): r for r in results["runs"]}
    assert len(runs) == 10
    assert all(len(r["val_acc"]) == 3 for r in runs.values())
    # freeze_unfreeze with 3 epochs unfreezes at epoch 1: head (+ BatchNorm) first, everything after
    phases = runs[("freeze_unfreeze", 0)]["phases"]
    total = runs[("no_freeze", 0)]["trainable"][0]
    assert [p[:2] for p in phases] == [[0, 0], [1, 2]]
    assert phases[0][2] < total == phases[1][2]
    assert runs[("freeze", 0)]["backbone_trainable"] == [0.0, 0.0, 0.0]
    assert runs[("unfreeze_milestones", 0)]["backbone_trainable"][-1] == 1.0
    assert results["weights"].endswith(".safetensors")


def test_fast_settings_and_overrides_keep_phases_inside_the_run():
    fast = settings_from(demo_parser().parse_args(["--fast"]))
    assert fast == DemoSettings.fast()
    assert fast.seeds == (0,)
    assert fast.unfreeze_epoch < fast.epochs
    assert fast.milestones[1] < fast.epochs
    short = settings_from(demo_parser().parse_args(["--epochs=3"]))
    assert short.unfreeze_epoch == 1
    assert short.milestones[0] < short.milestones[1] < 3
    assert DemoSettings().total_epochs == 10 + 12 * 5 * 5
