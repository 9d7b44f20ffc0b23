"""The built-in demo, run for real with tiny settings through the command's entry point, and its splits."""

from __future__ import annotations

import json

import image_helpers  # noqa: F401  (one torch thread)
import numpy as np
from PIL import Image

from finetune_strategies.cli.app import main
from finetune_strategies.cli.demo import demo_parser, settings_from
from finetune_strategies.demo import DemoSettings
from finetune_strategies.demo.experiment import digits, finetune_data, finetune_split, split_classes

TINY = ["--epochs=3", "--pretrain_epochs=1", "--shots=2", "--val_per_class=4", "--test_per_class=6", "--seeds=[0, 1]"]
ROWS = [
    "from scratch",
    "from scratch, 6 epochs",
    "no_freeze",
    "freeze",
    "freeze_unfreeze",
    "freeze_unfreeze + WiSE-FT",
    "unfreeze_milestones",
    "lp_ft",
    "freeze_unfreeze + l2_sp",
    "gradual_unfreeze",
]


def test_demo_prints_the_table_and_saves_plots_and_results(tmp_path, capsys):
    assert main(["demo", "--fast", f"--output={tmp_path}", *TINY]) == 0
    out = capsys.readouterr().out
    for name in ROWS:
        assert name in out
    assert "Test acc" in out
    assert "Pretraining task" in out
    assert "mean ± std over 2 seeds" in out.lower()
    for plot in ("val_accuracy.png", "drift.png"):
        with Image.open(tmp_path / plot) as image:
            assert image.format == "PNG"
            assert image.size[0] > 800
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["name"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {(name, seed) for name in ROWS for seed in (0, 1)}
    assert [r["name"] for r in results["summary"]] == ROWS
    assert all(len(r["val_acc"]) == (6 if r["name"] == "from scratch, 6 epochs" else 3) for r in runs.values())
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in runs.values())
    # freeze_unfreeze with 3 epochs unfreezes at epoch 1: head (+ BatchNorm) first, everything after
    phases = runs[("freeze_unfreeze", 0)]["phases"]
    total = runs[("no_freeze", 0)]["trainable"][0]
    assert [p[:2] for p in phases] == [[0, 0], [1, 2]]
    assert phases[0][2] < total == phases[1][2]
    assert runs[("freeze", 0)]["backbone_trainable"] == [0.0, 0.0, 0.0]
    assert runs[("lp_ft", 0)]["trainable"][0] == 5 * 96 + 5, "the probe trains the head alone"
    assert runs[("from scratch", 0)]["pretrain_task_acc"] is None
    assert runs[("freeze", 0)]["pretrain_task_acc"] > 0
    assert runs[("freeze_unfreeze + WiSE-FT", 0)]["wise_alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(runs[("gradual_unfreeze", 1)]["drift"]) == 3
    assert not runs[("from scratch", 1)]["drift"]
    assert results["weights"].endswith(".safetensors")
    for seed in (0, 1):  # the splits the runs used are the documented ones
        settings = DemoSettings.fast(epochs=3, pretrain_epochs=1, shots=2, val_per_class=4, test_per_class=6)
        assert results["splits"][str(seed)] == finetune_split(settings, digits()[1], seed)._asdict()


def _pixels(loader) -> list[np.ndarray]:
    return [
        np.asarray(item)[..., 0] if np.asarray(item).ndim == 3 else np.asarray(item)
        for item in loader.dataset.split.items
    ]


def test_no_test_image_reaches_training_or_a_choice():
    images, targets = digits()
    settings = DemoSettings()
    pretraining = set(np.flatnonzero(np.isin(targets, settings.pretrain_classes)).tolist())
    for seed in settings.seeds:
        split = finetune_split(settings, targets, seed)
        train, val, test = map(set, split)
        assert len(train) == len(split.train)
        assert len(val) == len(split.val)
        assert len(test) == len(split.test)
        assert not (train & val)
        assert not (train & test)
        assert not (val & test)
        assert train | val | test == set(np.flatnonzero(np.isin(targets, settings.finetune_classes)).tolist())
        assert not (test & pretraining)
        assert [int(targets[i]) for i in split.train] == [c for c in settings.finetune_classes for _ in range(3)]
        data = finetune_data(images, targets, split, settings)
        data.setup("fit")
        for loader, indices in ((data.train_dataloader(), split.train), (data.val_dataloader(), split.val)):
            assert all(np.array_equal(a, images[i]) for a, i in zip(_pixels(loader), indices, strict=True))
        assert all(
            np.array_equal(a, images[i]) for a, i in zip(_pixels(data.test_dataloader()), split.test, strict=True)
        )
    held, chosen = split_classes(targets, settings.pretrain_classes, (40, None), np.random.default_rng(0))
    assert not set(held) & set(chosen)
    assert set(held) | set(chosen) == pretraining


def test_fast_settings_and_overrides_keep_phases_inside_the_run():
    fast = settings_from(demo_parser().parse_args(["--fast"]))
    assert fast == DemoSettings.fast()
    assert fast.seeds == (0,)
    assert fast.unfreeze_epoch < fast.epochs
    assert fast.probe_epochs < fast.epochs
    assert fast.milestones[1] < fast.epochs
    short = settings_from(demo_parser().parse_args(["--epochs=3"]))
    assert short.unfreeze_epoch == short.probe_epochs == 1
    assert short.milestones[0] < short.milestones[1] < 3
    assert short.gradual_start + short.gradual_every < 3
    assert DemoSettings().total_epochs == 16 + (12 * 8 + 48) * 5  # 8 recipes, the long scratch run, 5 seeds
