"""Trainable-only checkpoints load at every entry point: validate, test and predict on a fresh Trainer
(the library's, or a plain one with the strategy), and ``load_from_checkpoint``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_TRAINER, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import Trainer, load_from_checkpoint, resolve_strategy
from finetune_strategies.checkpointing.trainable_only import is_trainable_only


class Predicting(TinyClassifier):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    directory = tmp_path_factory.mktemp("trainable_only")
    model = Predicting()
    callback = ModelCheckpoint(dirpath=directory, filename="only")
    make_trainer(1, enable_checkpointing=True, callbacks=[callback]).finetune(
        model, loader(), strategy="freeze", save_trainable_only=True
    )
    path = directory / "only.ckpt"
    assert is_trainable_only(torch.load(path, weights_only=True))
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
@pytest.mark.parametrize("trainer_kind", ["library", "plain with the strategy"])
def test_a_fresh_trainer_evaluates_it(
    trained: tuple[Path, dict[str, torch.Tensor]], entry: str, trainer_kind: str
) -> None:
    path, expected = trained
    if trainer_kind == "library":
        trainer: pl.Trainer = Trainer(**QUIET_TRAINER)
    else:
        trainer = pl.Trainer(callbacks=[resolve_strategy("freeze", save_trainable_only=True)], **QUIET_TRAINER)
    model = Predicting()
    with torch.no_grad():  # the trained head must come from the file
        model.head.weight.zero_()
    getattr(trainer, entry)(model, loader(), ckpt_path=path)
    assert_weights(model, expected)


def test_load_from_checkpoint_of_the_library_completes_it(trained: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = trained
    with pytest.raises(RuntimeError, match="Missing key"):  # Lightning's own cannot: the frozen weights are not in it
        Predicting.load_from_checkpoint(path)
    model = load_from_checkpoint(Predicting, path)
    assert type(model) is Predicting
    assert_weights(model, expected)
    with pytest.raises(RuntimeError, match="Missing key"):  # the class is left as it was
        Predicting.load_from_checkpoint(path)
