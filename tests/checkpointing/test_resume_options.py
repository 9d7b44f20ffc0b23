"""A resume with other options than the run that wrote the checkpoint is refused, naming each option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUIET_TRAINER, TinyClassifier, loader, make_trainer
from lightning.pytorch import Trainer as LightningTrainer
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import ResumeMismatchError, resolve_strategy


def train(directory: Path, strategy: Any, epochs: int = 1, **options: Any) -> Path:
    callback = ModelCheckpoint(dirpath=directory, save_last=True)
    make_trainer(epochs, enable_checkpointing=True, callbacks=[callback]).finetune(
        TinyClassifier(), loader(), strategy=strategy, **options
    )
    return directory / "last.ckpt"


def refused(directory: Path, strategy: Any, **options: Any) -> str:
    model = TinyClassifier()
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(2, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=directory, save_last=True)])
    with pytest.raises(ResumeMismatchError) as info:
        trainer.finetune(model, loader(), strategy=strategy, ckpt_path="last", **options)
    assert trainer.global_step == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, untouched[key]), key
    return str(info.value)


@pytest.mark.parametrize(
    ("first", "then", "fragments"),
    [
        (
            ("freeze", {"attr_names": "backbone"}),
            ("freeze", {"attr_names": "head"}),
            ["attr_names", "['backbone']", "['head']", "frozen modules", "ckpt_path=None"],
        ),
        (
            ("freeze_unfreeze", {"layer_lr_decay": 0.5}),
            ("freeze_unfreeze", {}),
            ["layer_lr_decay", "0.5", "None", "ckpt_path=None"],
        ),
        (("freeze", {}), ("freeze", {"train_bn": False}), ["train_bn", "True", "False"]),
        (("freeze_unfreeze", {}), ("freeze_unfreeze", {"bn_eval": True}), ["bn_eval"]),
        (
            ("freeze_unfreeze", {}),
            ("freeze_unfreeze", {"save_trainable_only": True}),
            ["save_trainable_only"],
        ),
    ],
)
def test_resume_with_other_options_is_refused_naming_each(
    tmp_path: Path, first: tuple[str, dict[str, Any]], then: tuple[str, dict[str, Any]], fragments: list[str]
) -> None:
    name, options = first
    train(tmp_path, name, **options)
    name, options = then
    message = refused(tmp_path, name, **options)
    for fragment in fragments:
        assert fragment in message, message


def test_resume_with_the_same_options_trains_every_parameter(tmp_path: Path) -> None:
    train(tmp_path, ("freeze_unfreeze", 1), layer_lr_decay=0.5, train_bn=False)
    model = TinyClassifier()
    trainer = make_trainer(2, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    before = {k: v.clone() for k, v in torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"].items()}
    trainer.finetune(
        model, loader(), strategy=("freeze_unfreeze", 1), layer_lr_decay=0.5, train_bn=False, ckpt_path="last"
    )
    after = model.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert "backbone.0.weight" in changed
    assert "head.weight" in changed


def test_a_plain_lightning_trainer_refuses_it_too(tmp_path: Path) -> None:
    path = train(tmp_path, "freeze", attr_names="backbone")
    trainer = LightningTrainer(
        max_epochs=2, **{**QUIET_TRAINER, "callbacks": [resolve_strategy("freeze", attr_names="head")]}
    )
    with pytest.raises(ResumeMismatchError, match="attr_names: saved \\['backbone'\\], now \\['head'\\]"):
        trainer.fit(TinyClassifier(), loader(), ckpt_path=path)
    assert trainer.global_step == 0


def test_a_crafted_strategy_state_is_refused_not_an_index_error(tmp_path: Path) -> None:
    path = train(tmp_path, ("freeze_unfreeze", 1), epochs=2)
    checkpoint = torch.load(path, weights_only=True)
    (state,) = (s for s in checkpoint["callbacks"].values() if isinstance(s, dict) and "started_phases" in s)
    state["started_phases"] = [0, 7]
    torch.save(checkpoint, path)
    message = refused(tmp_path, ("freeze_unfreeze", 1))
    assert "started phases [7]" in message


@pytest.mark.parametrize("strategy", ["freeze_unfreeze", "no_freeze"])
def test_optimizer_state_of_another_optimizer_class_is_refused_before_any_step(tmp_path: Path, strategy: str) -> None:
    path = train(tmp_path, strategy)  # SGD with momentum
    model = TinyClassifier(optimizer="adamw")
    trainer = make_trainer(2, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    with pytest.raises(ResumeMismatchError, match=r"optimizer 0 was saved without amsgrad, betas, .*AdamW keeps"):
        trainer.finetune(model, loader(), strategy=strategy, ckpt_path=path)  # torch: KeyError: 'step'
    assert trainer.global_step == 0
