"""Write predicted classes and probabilities to a CSV file during ``trainer.predict``."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override


class PredictionsCSVWriter(BasePredictionWriter):
    """Collect softmax outputs and write ``id, label, score, p_<class>...`` rows to ``output``.

    A prediction is a ``(batch, classes)`` tensor of probabilities, or a mapping that holds one under
    ``"probabilities"`` (as :meth:`TextClassifier.predict_step <finetune_strategies.text.TextClassifier.predict_step>`
    returns).

    ``id`` is the image path (or its index for arrays, tensors and texts) when the data module has
    ``predict_ids``, else the sample index. Class names come from the model's ``labels``, then the
    data module's, then the class indices. With several processes, each rank writes
    ``<stem>.rank<N>.csv``.
    """

    def __init__(self, output: str | Path = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self._rows: list[tuple[int, torch.Tensor]] = []

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(prediction, Mapping):
            prediction = prediction["probabilities"]
        probs = prediction.detach().float().cpu()
        start = len(self._rows)
        indices = list(batch_indices) if batch_indices else list(range(start, start + len(probs)))
        self._rows.extend(zip(indices, probs, strict=True))

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.output
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        self.write(path, self._rows, self._labels(trainer, pl_module), self._ids(trainer))

    @staticmethod
    def _labels(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str] | None:
        labels = getattr(pl_module, "labels", None)
        if labels is None:
            labels = getattr(trainer.datamodule, "labels", None)  # type: ignore[attr-defined]
        return None if labels is None else [str(label) for label in labels]

    @staticmethod
    def _ids(trainer: pl.Trainer) -> list[str] | None:
        ids = getattr(trainer.datamodule, "predict_ids", None)  # type: ignore[attr-defined]
        return None if ids is None else list(ids)

    @staticmethod
    def write(
        path: Path, rows: list[tuple[int, torch.Tensor]], labels: list[str] | None, ids: list[str] | None
    ) -> None:
        """Write ``rows`` of (sample index, class probabilities), sorted by index."""
        rows = sorted(rows, key=lambda row: row[0])
        num_classes = len(rows[0][1]) if rows else len(labels or [])
        fits = labels is not None and len(labels) == num_classes
        names = labels if labels is not None and fits else [str(i) for i in range(num_classes)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label", "score", *(f"p_{name}" for name in names)])
            for index, probs in rows:
                best = int(probs.argmax())
                sample_id = ids[index] if ids is not None and index < len(ids) else str(index)
                writer.writerow(
                    [sample_id, names[best], f"{float(probs[best]):.6f}", *(f"{float(p):.6f}" for p in probs)]
                )
