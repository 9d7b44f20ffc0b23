"""LP-FT, run for real: a fully frozen, cached linear probe, then everything at a small lr."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_data, make_trainer
from torch.utils.data import DataLoader

from finetune_strategies import LPFT, FinetuningStrategy, StrategySpecError, describe_schedule, resolve_strategy

BACKBONE = ["backbone.0.weight", "backbone.0.bias", "backbone.3.weight", "backbone.3.bias"]
BN = ["backbone.2.weight", "backbone.2.bias"]
HEAD = ["head.weight", "head.bias"]


class Counting(TinyClassifier):
    """Counts the samples that really went through the backbone's first layer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[int] = []
        self.backbone[0].register_forward_pre_hook(lambda module, args: self.seen.append(args[0].shape[0]))


def fit(spec: Any, epochs: int = 4, **options: Any) -> tuple[Counting, Recorder, FinetuningStrategy]:
    model, rec = Counting(), Recorder()
    trainer = make_trainer(epochs, callbacks=[rec])
    shuffled = DataLoader(make_data(32), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    trainer.finetune(model, shuffled, strategy=spec, **options)
    (strategy,) = (c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))
    return model, rec, strategy


def test_lp_ft_probes_with_a_frozen_cached_backbone_then_trains_everything_at_lr_over_10() -> None:
    model, rec, strategy = fit(("lp_ft", 2))
    assert isinstance(strategy, LPFT)
    for epoch, flags in enumerate(rec.requires_grad):
        probe = epoch < 2
        assert all(flags[n] for n in HEAD)
        assert all(flags[n] is not probe for n in BACKBONE), epoch
        assert not any(flags[n] for n in BN), "train_bn=False: BatchNorm affine stays at its pretrained values"
    assert [all(not t for t in modes.values()) for modes in rec.bn_training] == [True, True, False, False]
    # the cache: epoch 0 computes 32 samples (and its first batch of 8 once more, to check the backbone is a
    # fixed function), epoch 1 none; from the switch every batch runs the backbone
    assert sum(model.seen) == 32 + 8 + 2 * 32
    stats = strategy.cache_stats["backbone"]
    assert (stats.samples, stats.hits, stats.misses) == (32, 32, 32)
    # the lr after the switch: the backbone's group at group 0's lr / 10, the head's unchanged
    assert rec.group_names[:2] == [[None], [None]]
    assert rec.group_names[2] == rec.group_names[3] == [None, "backbone"]
    assert rec.group_lrs[2] == pytest.approx([0.1, 0.01])
    backbone_group = {id(p) for n, p in model.named_parameters() if n in BACKBONE}
    assert set(rec.groups[2][1]) == backbone_group
    # nothing but the head moved during the probe; everything but BatchNorm's affine after it
    for name in BACKBONE + BN:
        assert torch.equal(rec.initial[name], rec.weights[1][name]), name
    for name in BACKBONE:
        assert not torch.equal(rec.weights[1][name], rec.weights[3][name]), name


def test_lp_ft_takes_a_plateau_trigger_for_the_end_of_the_probe() -> None:
    class Scored(TinyClassifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_score", torch.tensor([1.0, 0.8, 0.9, 0.95, 0.5, 0.4][self.current_epoch]))

    model, rec = Scored(), Recorder()
    trainer = make_trainer(6, callbacks=[rec])
    spec = {"strategy": "lp_ft", "probe_epochs": None, "monitor": "val_score", "patience": 2}
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=spec)
    (strategy,) = (c for c in trainer.callbacks if isinstance(c, LPFT))
    (transition,) = strategy.transitions
    assert (transition.epoch, transition.best_epoch) == (4, 1)
    assert [flags["backbone.0.weight"] for flags in rec.requires_grad] == [False] * 4 + [True] * 2


def test_lp_ft_defaults_and_their_checks() -> None:
    strategy = resolve_strategy("lp_ft")
    assert isinstance(strategy, LPFT)
    assert (strategy.probe_epochs, strategy.train_bn, strategy.bn_eval, strategy.cache_features) == (
        5,
        False,
        True,
        True,
    )
    assert resolve_strategy({"strategy": "lp_ft", "cache_features": False, "train_bn": True}).train_bn
    deepspeed = resolve_strategy("lp_ft_deepspeed")
    assert deepspeed.preregister_groups
    assert not deepspeed.cache_features
    with pytest.raises(StrategySpecError, match=r"train_bn=False and bn_eval=True.*cache_features=False"):
        resolve_strategy({"strategy": "lp_ft", "train_bn": True})
    with pytest.raises(StrategySpecError, match=r"probe_epochs=None.*needs `monitor`"):
        resolve_strategy({"strategy": "lp_ft", "probe_epochs": None})


def test_describe_schedule_shows_the_probe_and_the_switch() -> None:
    plan = describe_schedule(TinyClassifier(), ("lp_ft", 2), max_epochs=3)
    assert [e.started for e in plan.epochs] == [[], [], ["backbone"]]
    assert next(e.training for e in plan.epochs) == [("head", 18)]
    assert [(g.name, g.lr) for g in plan.epochs[2].groups] == [(None, 0.1), ("backbone", pytest.approx(0.01))]
