"""Replay: a fraction of pretraining samples mixed into the fine-tuning training set."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from transfer_tools import BASE_TRAINER, StageSpy, TinyData, TinyRegressor, one_thread  # noqa: F401

from finetune_strategies.errors import TransferConfigError
from finetune_strategies.transfer import ReplayDataModule, mix_replay, run_transfer_learning


def tagged(n: int, tag: float) -> TensorDataset:
    """Samples whose target is ``tag + index``, so every sample can be recognised in a batch."""
    return TensorDataset(torch.zeros(n, 3), tag + torch.arange(n, dtype=torch.float32))


NEW, OLD = 1000.0, 5000.0


def test_mix_replay_draws_the_fraction_without_replacement() -> None:
    mixed = mix_replay(tagged(12, NEW), tagged(40, OLD), fraction=0.25, seed=0)
    targets = [float(mixed[i][1]) for i in range(len(mixed))]
    old = [t for t in targets if t >= OLD]
    assert len(mixed) == 16
    assert len(old) == 4 == len(set(old))
    assert [t for t in targets if t < OLD] == [NEW + i for i in range(12)]
    again = mix_replay(tagged(12, NEW), tagged(40, OLD), fraction=0.25, seed=0)
    other = mix_replay(tagged(12, NEW), tagged(40, OLD), fraction=0.25, seed=1)
    assert [float(again[i][1]) for i in range(16)] == targets
    assert [float(other[i][1]) for i in range(16)] != targets
    new = tagged(12, NEW)
    assert mix_replay(new, tagged(40, OLD), fraction=0.0) is new
    assert len(mix_replay(tagged(12, NEW), tagged(40, OLD), fraction=0.5)) == 24  # 50:50


def test_too_little_pretraining_data_is_an_error() -> None:
    with pytest.raises(
        TransferConfigError,
        match=r"needs 30 pretraining samples .* has 20\. Use a fraction of at most 0\.400",
    ):
        mix_replay(tagged(30, NEW), tagged(20, OLD), fraction=0.5)
    with pytest.raises(TransferConfigError, match=r"\[0, 1\)"):
        mix_replay(tagged(3, NEW), tagged(20, OLD), fraction=1.0)


class Tagged(pl.LightningDataModule):
    def __init__(self, n: int, tag: float, shuffle: bool = False) -> None:
        super().__init__()
        self.n, self.tag, self.shuffle = n, tag, shuffle

    def train_dataloader(self) -> DataLoader:
        return DataLoader(tagged(self.n, self.tag), batch_size=4, shuffle=self.shuffle)


def test_replay_data_module_trains_on_the_mixed_set(tmp_path) -> None:
    spy = StageSpy()
    replay = ReplayDataModule(Tagged(8, NEW, shuffle=True), Tagged(30, OLD), fraction=0.5, seed=0)
    trainer = pl.Trainer(**{**BASE_TRAINER, "max_epochs": 1, "callbacks": [spy], "default_root_dir": tmp_path})
    trainer.fit(TinyRegressor(), replay)  # the fine-tuning module has no val_dataloader: none is run
    targets = spy.fits[0]["targets"]
    assert sorted(t for t in targets if t < OLD) == [NEW + i for i in range(8)]
    assert len([t for t in targets if t >= OLD]) == 8
    assert spy.fits[0]["batch_sizes"] == [4, 4, 4, 4]  # the fine-tuning loader's batch size is kept
    assert trainer.num_val_batches == []


def test_replay_as_a_stage_option(tmp_path) -> None:
    spy = StageSpy()
    config = {
        "trainer": {**BASE_TRAINER, "max_epochs": 1},
        "replay": {"fraction": 0.2, "seed": 3},
        "stages": [
            {"name": "mixed"},
            {"name": "plain", "replay": None},
            {"name": "half", "replay": {"fraction": 0.5}},
        ],
    }
    run_transfer_learning(
        config,
        TinyRegressor(),
        Tagged(8, NEW),
        replay_data=tagged(50, OLD),
        callbacks=[spy],
        output_dir=tmp_path,
    )
    replayed = [len([t for t in fit["targets"] if t >= OLD]) for fit in spy.fits]
    assert replayed == [2, 0, 8]
    for fit in spy.fits:
        assert sorted(t for t in fit["targets"] if t < OLD) == [NEW + i for i in range(8)]


def test_replay_rejects_loaders_it_cannot_rebuild(tmp_path) -> None:
    class CustomSampler(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            data = tagged(8, NEW)
            return DataLoader(data, batch_size=2, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 8, 8))

    trainer = pl.Trainer(**{**BASE_TRAINER, "max_epochs": 1, "default_root_dir": tmp_path})
    with pytest.raises(TransferConfigError, match="custom sampler"):
        trainer.fit(TinyRegressor(), ReplayDataModule(CustomSampler(), tagged(8, OLD), fraction=0.5))
    with pytest.raises(TransferConfigError, match="wraps a LightningDataModule"):
        ReplayDataModule(tagged(8, NEW), tagged(8, OLD), fraction=0.5)  # type: ignore[arg-type]
