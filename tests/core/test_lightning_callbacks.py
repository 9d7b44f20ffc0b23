"""Lightning's own callbacks beside a strategy: they train as they would without one."""

from __future__ import annotations

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import StochasticWeightAveraging


@pytest.mark.parametrize(
    ("swa_start", "expected_lrs"),
    [
        # SWA anneals group 0 to 0.05 from epoch 1; the backbone's group joins at epoch 2 at lr / 10 and
        # follows group 0 at that ratio (swa_lr 0.005), as with every scheduler
        (1, [[0.1], [0.05], [0.05, 0.005], [0.05, 0.005], [0.05, 0.005], [0.05, 0.005]]),
        # SWA starts after the unfreeze: it sets every group's swa_lr itself
        (3, [[0.1], [0.1], [0.1, 0.01], [0.05, 0.05], [0.05, 0.05], [0.05, 0.05]]),
    ],
    ids=["before the unfreeze", "after the unfreeze"],
)
def test_stochastic_weight_averaging_learns_the_added_group(
    recorder: Recorder, swa_start: int, expected_lrs: list[list[float]]
) -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=swa_start, annealing_epochs=1)
    model = TinyClassifier()
    make_trainer(5, callbacks=[swa, recorder]).finetune(model, loader(), strategy=("freeze_unfreeze", 2))
    assert [len(lrs) for lrs in recorder.group_lrs] == [len(lrs) for lrs in expected_lrs]
    for found, expected in zip(recorder.group_lrs, expected_lrs, strict=True):
        assert found == pytest.approx(expected)
    assert not torch.equal(recorder.weights[1]["backbone.0.weight"], model.backbone[0].weight)  # it trained
    assert all(p.requires_grad for p in model.parameters())
