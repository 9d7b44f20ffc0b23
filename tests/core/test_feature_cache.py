"""The opt-in frozen-feature cache: same head weights as without it, and its refusals."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import Recorder, TinyClassifier, make_data, make_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finetune_strategies import ConfigurationError, FinetuningStrategy


class CountingBackbone(TinyClassifier):
    """Counts how many samples went through the real backbone forward."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = 0
        self.backbone[0].register_forward_pre_hook(self._count)  # runs only when the backbone computes

    def _count(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.seen += args[0].shape[0]


def strategy_of(trainer: Any) -> FinetuningStrategy:
    (strategy,) = (c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))
    return strategy


def shuffled_loader() -> DataLoader:
    return DataLoader(make_data(32), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))


def fit(cache: bool, spec: Any = "freeze", epochs: int = 3, **options: Any) -> tuple[CountingBackbone, Recorder, Any]:
    torch.manual_seed(0)
    model, rec = CountingBackbone(), Recorder()
    trainer = make_trainer(epochs, callbacks=[rec])
    trainer.finetune(
        model, shuffled_loader(), strategy=spec, train_bn=False, bn_eval=True, cache_features=cache, **options
    )
    return model, rec, trainer


def test_cache_gives_the_same_head_and_skips_the_backbone() -> None:
    plain, plain_rec, _ = fit(cache=False)
    cached, cached_rec, trainer = fit(cache=True)
    assert plain.seen == 3 * 32
    # after the first epoch, features come from the cache; its first batch (8) runs twice, to check it is fixed
    assert cached.seen == 32 + 8
    for name in ("head.weight", "head.bias"):
        assert torch.allclose(plain_rec.weights[-1][name], cached_rec.weights[-1][name], atol=1e-5)
        assert not torch.equal(cached_rec.initial[name], cached_rec.weights[-1][name])
    stats = strategy_of(trainer).cache_stats["backbone"]
    assert (stats.samples, stats.bytes, stats.hits, stats.misses) == (32, 32 * 8 * 4, 64, 32)


def test_cache_is_dropped_at_unfreeze() -> None:
    model, rec, trainer = fit(cache=True, spec=("freeze_unfreeze", 2), epochs=4)
    assert model.seen == 8 + 32 + 2 * 32, "the check, epoch 0 fills, epoch 1 hits, epochs 2-3 run the backbone"
    assert "forward" not in vars(model.backbone), "the original forward is restored"
    assert strategy_of(trainer).cache_stats["backbone"].hits == 32
    assert not torch.equal(rec.weights[1]["backbone.0.weight"], rec.weights[3]["backbone.0.weight"])


def test_cache_bound() -> None:
    with pytest.warns(UserWarning, match="reached its bound"):
        model, _, trainer = fit(cache=True, cache_max_bytes=10 * 8 * 4)
    assert strategy_of(trainer).cache_stats["backbone"].samples == 10
    assert model.seen == 8 + 32 + 2 * 22


def test_refuses_trainable_backbone_parts() -> None:
    with pytest.raises(ConfigurationError, match=r"fully frozen.*train_bn=False"):
        make_trainer(1).finetune(TinyClassifier(), shuffled_loader(), strategy="freeze", cache_features=True)


def test_refuses_batchnorm_in_train_mode() -> None:
    with pytest.raises(ConfigurationError, match=r"BatchNorm in eval mode.*bn_eval=True"):
        make_trainer(1).finetune(
            TinyClassifier(), shuffled_loader(), strategy="freeze", train_bn=False, cache_features=True
        )


def test_refuses_active_dropout() -> None:
    model = TinyClassifier()
    model.backbone.append(nn.Dropout(0.5))
    with pytest.raises(ConfigurationError, match="active dropout"):
        make_trainer(1).finetune(
            model, shuffled_loader(), strategy="freeze", train_bn=False, bn_eval=True, cache_features=True
        )


class NoisyData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A random augmentation: the same sample differs every epoch."""

    def __init__(self) -> None:
        self.base = make_data(16)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        return x + 0.01 * torch.randn_like(x), y


def test_refuses_random_transform() -> None:
    with pytest.raises(ConfigurationError, match="inputs change between epochs"):
        make_trainer(2).finetune(
            TinyClassifier(),
            DataLoader(NoisyData(), batch_size=8),
            strategy="freeze",
            train_bn=False,
            bn_eval=True,
            cache_features=True,
        )


def test_validation_runs_the_real_backbone() -> None:
    cached = CountingBackbone()
    val = DataLoader(make_data(8, seed=9), batch_size=8)
    make_trainer(2).finetune(
        cached,
        shuffled_loader(),
        strategy="freeze",
        train_bn=False,
        bn_eval=True,
        cache_features=True,
        val_dataloaders=val,
    )
    assert cached.seen == 8 + 32 + 2 * 8  # the check of the first batch, epoch 0, validation twice


def test_refuses_stochastic_depth_by_behaviour() -> None:
    from timm.layers import DropPath  # not a dropout class: the cache notices by two forward passes

    model = TinyClassifier()
    model.backbone.append(DropPath(0.3))
    with pytest.raises(ConfigurationError, match=r"two forward passes .* \(backbone\.5\).*drop_path_rate") as info:
        make_trainer(1).finetune(
            model, shuffled_loader(), strategy="freeze", train_bn=False, bn_eval=True, cache_features=True
        )
    assert "fixed function" in str(info.value)
