"""Replay: mix part of the pretraining data into the fine-tuning training set.

mlip recommends it when the fine-tuning data differ strongly from the pretraining data. ``fraction``
is the share of pretraining samples in the mixed training set: with ``n`` fine-tuning samples,
``round(n * fraction / (1 - fraction))`` pretraining samples are drawn once, without replacement,
with ``seed`` (``0.5`` gives 50:50, ``0.1`` gives 90:10). Validation, test and predict data are the
fine-tuning data module's own.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset
from typing_extensions import override

from finetune_strategies.errors import TransferConfigError

# Hooks taken over from the wrapped data module as they are, so Lightning sees what it overrides.
_DELEGATED = (
    "val_dataloader",
    "test_dataloader",
    "predict_dataloader",
    "transfer_batch_to_device",
    "on_before_batch_transfer",
    "on_after_batch_transfer",
)


def replay_count(num_new: int, fraction: float) -> int:
    """How many pretraining samples make up ``fraction`` of a set with ``num_new`` new samples."""
    if not 0 <= fraction < 1:
        raise TransferConfigError(f"The replay fraction must be in [0, 1), got {fraction!r}.")
    return round(num_new * fraction / (1 - fraction))


def _sized(dataset: Any, what: str) -> int:
    try:
        return len(dataset)
    except TypeError:
        raise TransferConfigError(f"Replay needs a {what} with a length (a map-style Dataset).") from None


def mix_replay(new: Dataset[Any], pretraining: Dataset[Any], fraction: float, seed: int = 0) -> Dataset[Any]:
    """``new`` followed by a random subset of ``pretraining`` that makes up ``fraction`` of the result."""
    num_new = _sized(new, "fine-tuning dataset")
    available = _sized(pretraining, "pretraining dataset")
    count = replay_count(num_new, fraction)
    if count > available:
        most = available / (available + num_new)
        raise TransferConfigError(
            f"Replay fraction {fraction} needs {count} pretraining samples for {num_new} fine-tuning "
            "samples, "
            f"but the pretraining data has {available}. Use a fraction of at most {most:.3f}."
        )
    if count == 0:
        return new
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(available, generator=generator)[:count].tolist()
    return ConcatDataset([new, Subset(pretraining, indices)])


def _pretraining_dataset(source: Dataset[Any] | pl.LightningDataModule) -> Dataset[Any]:
    if not isinstance(source, pl.LightningDataModule):
        return source
    source.prepare_data()
    source.setup("fit")
    loader = source.train_dataloader()
    if not isinstance(loader, DataLoader):
        raise TransferConfigError(
            f"The replay data module {type(source).__name__} must return one DataLoader from train_dataloader()."
        )
    return loader.dataset


class ReplayDataModule(pl.LightningDataModule):
    """A fine-tuning data module whose training set also holds a ``fraction`` of pretraining samples.

    Args:
        datamodule: The fine-tuning data module. Its train DataLoader's batch size, shuffling,
            collate function and workers are kept for the mixed set.
        pretraining: The pretraining data, as a Dataset or a data module (its training set is used).
        fraction: Share of pretraining samples in the mixed training set, in [0, 1).
        seed: Seed of the draw of pretraining samples.
    """

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        pretraining: Dataset[Any] | pl.LightningDataModule,
        fraction: float,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TransferConfigError(f"ReplayDataModule wraps a LightningDataModule, got {datamodule!r}.")
        replay_count(0, fraction)  # checks the range
        self.datamodule = datamodule
        self.pretraining = pretraining
        self.fraction = fraction
        self.seed = seed
        for hook in _DELEGATED:
            setattr(self, hook, getattr(datamodule, hook))

    @override
    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    @override
    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    @override
    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        loader = self.datamodule.train_dataloader()
        name = type(self.datamodule).__name__
        if not isinstance(loader, DataLoader) or loader.batch_size is None:
            raise TransferConfigError(
                f"Replay rebuilds {name}'s train DataLoader, so it must be one DataLoader with a batch_size "
                "(no custom batch_sampler). Otherwise mix the datasets with mix_replay() yourself."
            )
        if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
            raise TransferConfigError(
                f"Replay cannot keep the custom sampler ({type(loader.sampler).__name__}) of {name}'s train "
                "DataLoader. Mix the datasets with mix_replay() and build the loader yourself."
            )
        mixed = mix_replay(loader.dataset, _pretraining_dataset(self.pretraining), self.fraction, self.seed)
        return DataLoader(
            mixed,
            batch_size=loader.batch_size,
            shuffle=isinstance(loader.sampler, RandomSampler),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            persistent_workers=loader.persistent_workers,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)
