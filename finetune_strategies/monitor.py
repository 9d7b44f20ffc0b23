"""A callback that records what is trainable at each epoch, for logs, tables and plots."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning.pytorch as pl


@dataclass
class EpochRecord:
    """What was trainable during one epoch (read at its first training batch)."""

    epoch: int
    trainable_params: int
    total_params: int
    trainable_modules: dict[str, bool] = field(default_factory=dict)
    group_lrs: list[float] = field(default_factory=list)


class TrainableMonitor(pl.Callback):
    """Record, and log as ``trainable_params``, how much of the model trains at each epoch.

    ``trainable_modules`` tells, for each top-level child of the LightningModule, whether any of its
    parameters requires grad.
    """

    def __init__(self, log: bool = True) -> None:
        self.log = log
        self.records: list[EpochRecord] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if self.records and self.records[-1].epoch == trainer.current_epoch:
            return
        params = list(pl_module.parameters())
        record = EpochRecord(
            epoch=trainer.current_epoch,
            trainable_params=sum(p.numel() for p in params if p.requires_grad),
            total_params=sum(p.numel() for p in params),
            trainable_modules={
                name: any(p.requires_grad for p in child.parameters())
                for name, child in pl_module.named_children()
                if any(True for _ in child.parameters())
            },
            group_lrs=[float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups],
        )
        self.records.append(record)
        if self.log:
            pl_module.log("trainable_params", float(record.trainable_params), on_step=False, on_epoch=True)

    def frozen_epochs(self, module: str = "backbone") -> list[int]:
        """Epochs in which ``module`` had no trainable parameter."""
        return [r.epoch for r in self.records if not r.trainable_modules.get(module, True)]
