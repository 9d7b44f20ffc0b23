"""From a finetuning-scheduler (FTS) schedule to the ``phases`` strategy: the FTS YAML ("before"), the same
schedule as ``phases`` ("after"), and a run that checks, epoch by epoch, that what trains is what the FTS
schedule names. With finetuning-scheduler installed, ``--run-fts`` also trains with FTS and compares.

    python examples/migrate_from_fts.py [--run-fts]

Phase 0 of an FTS schedule is what trains from the start: here everything that is not frozen
(``attr_names``). Each later FTS phase is one of ours, its parameter regexes become module selectors, and
``max_transition_epoch`` on FTS phase N becomes ``epoch`` on the phase that follows it (the latest epoch
at which it starts). ``FTSEarlyStopping``'s ``monitor``/``patience``/``min_delta`` become the strategy's.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer

# ---------------------------------------------------------------- before: FTS's schedule file
FTS_SCHEDULE = r"""
0:
  params: ['head\..*']
  max_transition_epoch: 2
1:
  params: ['backbone\.2\..*']
  lr: 0.01
  max_transition_epoch: 4
2:
  params: ['backbone\.0\..*']
"""
# FinetuningScheduler(ft_schedule="schedule.yaml", epoch_transitions_only=True)  (or FTSEarlyStopping(...)
# with monitor="val_loss", patience=2 for plateau-driven transitions)

# ---------------------------------------------------------------- after: the same schedule as `phases`
PHASES: dict[str, Any] = {
    "strategy": "phases",
    "attr_names": "backbone",  # FTS phase 0 trains the rest: the head
    "phases": [
        {"epoch": 2, "modules": ["backbone.2"], "lr": 0.01},  # FTS phase 1 (phase 0's max_transition_epoch: 2)
        {"epoch": 4, "modules": ["backbone.0"]},  # FTS phase 2 (phase 1's max_transition_epoch: 4)
    ],
    # plateau-driven, as with FTSEarlyStopping: "monitor": "val_loss", "patience": 2
}


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


class Trainable(pl.Callback):
    """The names of the parameters that require grad at every epoch start."""

    def __init__(self) -> None:
        self.epochs: list[set[str]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if args[-1] == 0:
            self.epochs.append({n for n, p in pl_module.named_parameters() if p.requires_grad})


def expected_from_fts(schedule: dict[int, Any], names: list[str], epochs: int) -> list[set[str]]:
    """What the FTS schedule trains at each epoch, with epoch-driven transitions."""
    trainable: set[str] = set()
    starts = {0: 0} | {
        phase + 1: spec["max_transition_epoch"] for phase, spec in schedule.items() if "max_transition_epoch" in spec
    }
    per_epoch = []
    for epoch in range(epochs):
        for phase, start in starts.items():
            if start == epoch:
                trainable |= {n for n in names for rx in schedule[phase]["params"] if re.fullmatch(rx, n)}
        per_epoch.append(set(trainable))
    return per_epoch


def loader() -> DataLoader[Any]:
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def main(argv: list[str] | None = None) -> list[set[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--run-fts", action="store_true", help="also train with finetuning-scheduler")
    args = parser.parse_args(argv)
    schedule = yaml.safe_load(FTS_SCHEDULE)
    quiet: dict[str, Any] = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False}
    quiet |= {"enable_progress_bar": False, "enable_model_summary": False}
    model, ours = Model(), Trainable()
    Trainer(max_epochs=args.epochs, callbacks=[ours], **quiet).finetune(model, loader(), strategy=PHASES)
    expected = expected_from_fts(schedule, [n for n, _ in model.named_parameters()], args.epochs)
    assert ours.epochs == expected, (ours.epochs, expected)
    for epoch, names in enumerate(ours.epochs):
        print(f"epoch {epoch}: {sorted(names)}")
    if args.run_fts:
        from finetuning_scheduler import FinetuningScheduler

        theirs = Trainable()
        fts = FinetuningScheduler(ft_schedule=schedule, epoch_transitions_only=True)
        pl.Trainer(max_epochs=args.epochs, callbacks=[fts, theirs], **quiet).fit(Model(), loader())
        assert theirs.epochs == ours.epochs, (theirs.epochs, ours.epochs)
        print("finetuning-scheduler trains the same parameters at every epoch")
    return ours.epochs


if __name__ == "__main__":
    main()
