"""The drift monitor, run for real: its values against the weights a recorder saw, its log and plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from finetune_strategies import DriftMonitor, MissingModuleError, plot_drift

LAYERS = {
    "backbone.0": ["0.weight", "0.bias"],
    "backbone.2": ["2.weight", "2.bias"],
    "backbone.3": ["3.weight", "3.bias"],
}


def test_drift_is_the_relative_distance_of_each_layer_from_its_start(tmp_path: Path) -> None:
    model, rec, drift = TinyClassifier(), Recorder(), DriftMonitor()
    trainer = make_trainer(3, callbacks=[rec, drift], logger=CSVLogger(tmp_path, name="drift"))
    trainer.finetune(model, loader(), strategy=("freeze_unfreeze", 1))
    assert len(drift.history) == 3
    for epoch, values in enumerate(drift.history):
        assert list(values) == list(LAYERS)  # the strategy's layers, bottom to top
        for layer, params in LAYERS.items():
            names = [f"backbone.{p}" for p in params]
            moved = torch.cat([(rec.weights[epoch][n] - rec.initial[n]).flatten() for n in names])
            start = torch.cat([rec.initial[n].flatten() for n in names])
            assert values[layer] == pytest.approx(float(moved.norm() / start.norm()), rel=1e-6), (epoch, layer)
    assert drift.history[0]["backbone.0"] == 0.0, "frozen in epoch 0"
    assert drift.history[0]["backbone.2"] > 0.0, "BatchNorm trains with train_bn=True"
    assert drift.history[2]["backbone.0"] > drift.history[1]["backbone.0"] > 0.0
    assert trainer.callback_metrics["drift/backbone.3"] == pytest.approx(drift.history[-1]["backbone.3"])
    assert "drift/backbone.0" in (Path(trainer.logger.log_dir) / "metrics.csv").read_text()  # type: ignore[union-attr]

    plot = plot_drift({"freeze_unfreeze": drift.history, "again": drift.history}, tmp_path / "drift.png")
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.size[0] > 800


def test_drift_in_another_unit_and_without_pretrained_modules() -> None:
    drift = DriftMonitor(layer_unit="flash_leaves", log=False)
    make_trainer(1, callbacks=[drift]).finetune(TinyClassifier(), loader(), strategy="no_freeze")
    assert list(drift.history[0]) == [f"backbone.{i}" for i in range(5)]  # parameter-less leaves too
    assert drift.history[0]["backbone.1"] == 0.0
    with pytest.raises(MissingModuleError, match=r"no module to freeze as attr_names=\['encoder'\] asks"):
        make_trainer(1, callbacks=[DriftMonitor(attr_names="encoder")]).fit(TinyClassifier(), loader())
