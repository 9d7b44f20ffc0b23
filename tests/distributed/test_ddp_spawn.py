"""``ddp_spawn`` starts with every built-in strategy: the trainer and its callbacks pickle, and the ranks
train identically."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_TRAINER
from ddp_helpers import WORLD, Dump, Net, data, load_ranks, make_callback, make_trainer
from torch.utils.data import DataLoader

from finetune_strategies import Finetuner, available_strategies

BUILT_INS = sorted(
    name for name in available_strategies() if not name.endswith("_deepspeed") and name not in {"lora", "phases"}
)


@pytest.mark.parametrize("name", BUILT_INS)
def test_every_built_in_pickles_before_and_after_a_fit(name: str) -> None:
    callback = make_callback(name)
    trainer = make_trainer(2, callbacks=[callback])
    pickle.loads(pickle.dumps(trainer))
    trainer.finetune(Net(), DataLoader(data(), batch_size=8), strategy=callback)
    pickle.loads(pickle.dumps(trainer))
    spec = {"freeze_unfreeze": (name, 1), "surgical": (name, {"layers": -1})}.get(name, name)
    pickle.loads(pickle.dumps(Finetuner(spec)))


@pytest.mark.parametrize("library", [True, False], ids=["library Trainer", "plain Trainer"])
def test_ddp_spawn_trains_on_two_cpu_ranks_identically(tmp_path: Path, library: bool) -> None:
    dump = Dump(tmp_path / "spawn")
    loader = DataLoader(data(), batch_size=4)
    options = {**QUIET_TRAINER, "devices": WORLD, "strategy": "ddp_spawn", "limit_val_batches": 0}
    if library:
        make_trainer(3, **options, callbacks=[dump]).finetune(Net(), loader, strategy=("freeze_unfreeze", 1))
    else:
        trainer = pl.Trainer(max_epochs=3, **options, callbacks=[make_callback("freeze_unfreeze"), dump])
        trainer.fit(Net(), loader)
    ranks = load_ranks(tmp_path / "spawn")
    assert len(ranks) == WORLD
    first, second = ranks
    for name, tensor in first["final"].items():
        assert torch.equal(tensor, second["final"][name]), name
    assert all(first["requires_grad"].values())  # the unfreezes happened in the spawned ranks
    assert not torch.equal(first["final"]["backbone.0.weight"], first["initial"]["backbone.0.weight"])
