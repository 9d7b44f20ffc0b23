"""TrainableMonitor: what trains at each epoch, per module, with param-group lrs and names."""

from __future__ import annotations

from typing import Any

import torch
from conftest import TinyClassifier, loader, make_trainer
from torch import nn

from finetune_strategies import TrainableMonitor
from finetune_strategies.recipes.monitor import trainable_fraction


class NamedGroups(TinyClassifier):
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD([{"params": params, "name": "head"}], lr=self.lr)


def test_records_per_epoch_with_fractions_and_group_names() -> None:
    monitor = TrainableMonitor(log=False, skip_batchnorm=True)
    make_trainer(3, callbacks=[monitor]).finetune(
        NamedGroups(), loader(), strategy=("freeze_unfreeze", 1), train_bn=True
    )
    first, second, third = monitor.records
    assert [r.epoch for r in monitor.records] == [0, 1, 2]
    assert first.trainable_modules == {"backbone": True, "head": True}  # BatchNorm trains (train_bn)
    assert first.trainable_fractions == {"backbone": 0.0, "head": 1.0}  # but the rest of the backbone does not
    assert first.frozen_params == first.total_params - first.trainable_params > 0
    assert second.trainable_fractions == third.trainable_fractions == {"backbone": 1.0, "head": 1.0}
    assert second.frozen_params == 0
    assert first.group_names == ["head"]
    assert len(second.group_names) == len(second.group_lrs) == 2
    assert second.group_names[0] == "head"
    assert monitor.frozen_epochs() == []


def test_trainable_fraction_counts_values_and_can_skip_batchnorm() -> None:
    module = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # 28 values, 8 of them BatchNorm's
    module[0].weight.requires_grad_(False)
    assert trainable_fraction(module) == 12 / 28
    assert trainable_fraction(module, skip_batchnorm=True) == 4 / 20
    assert trainable_fraction(nn.ReLU()) == 0.0
