"""``SplitDataModule``: the loaders of a data module that holds train, val, test and predict splits.

The image and text data modules build their datasets in ``setup`` from the splits they were given; this
base turns them into loaders the same way for both: the train loader shuffles, the others keep the
order and use ``eval_batch_size``; a stage without data is refused with what to pass, and a missing val
split gives Lightning an empty list (no validation).
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from finetune_strategies.validation import ErrorClass, check_non_negative_int, check_positive_int

STAGES = ("train", "val", "test", "predict")


class SplitDataModule(pl.LightningDataModule):
    """Subclasses call :meth:`set_loading` in ``__init__``, fill ``_datasets`` in ``setup``, and implement
    :meth:`_checked_splits`; :attr:`data_error` and :attr:`data_arguments` word their refusals."""

    data_error: ClassVar[ErrorClass] = ValueError
    """The error raised for a stage without data."""
    data_arguments: ClassVar[str] = "{stage}_data"
    """The constructor arguments that give a stage its data, as a format string of ``stage``."""

    val_split: float
    batch_size: int
    eval_batch_size: int
    num_workers: int
    _datasets: dict[str, Dataset[Any]]

    def set_loading(self, val_split: float, batch_size: int, eval_batch_size: int | None, num_workers: int) -> None:
        """Check and keep the settings every split data module takes (``eval_batch_size=None``: ``batch_size``)."""
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not 0 <= val_split < 1:
            raise self.data_error(f"`val_split` must be a fraction in [0, 1), got {val_split!r}.")
        self.val_split = float(val_split)
        self.batch_size = check_positive_int("batch_size", batch_size, error=self.data_error)
        self.eval_batch_size = (
            self.batch_size
            if eval_batch_size is None
            else check_positive_int("eval_batch_size", eval_batch_size, error=self.data_error)
        )
        self.num_workers = check_non_negative_int("num_workers", num_workers, error=self.data_error)
        self._datasets = {}

    def _checked_splits(self) -> dict[str, Any]:
        """Every stage's split, ``None`` for a stage without data (checked once)."""
        raise NotImplementedError

    def has(self, stage: str) -> bool:
        """Whether the data module holds samples for ``stage`` (train, val, test or predict)."""
        return self._checked_splits()[stage] is not None

    def loader_options(self, stage: str, shuffle: bool) -> dict[str, Any]:
        """The ``DataLoader`` arguments besides dataset, batch size and workers; by default ``shuffle``."""
        return {"shuffle": shuffle}

    def _loader(self, stage: str, shuffle: bool = False) -> DataLoader[Any]:
        if stage not in self._datasets:
            if not self.has(stage):
                hold_out = " (or val_split)" if stage == "val" else ""
                raise self.data_error(
                    f"No {stage} data: build the data module with {self.data_arguments.format(stage=stage)}{hold_out}."
                )
            self.setup(stage)
        return DataLoader(
            self._datasets[stage],
            batch_size=self.batch_size if stage == "train" else self.eval_batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **self.loader_options(stage, shuffle),
        )

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> Any:
        return self._loader("val") if self.has("val") else []

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader("predict")
