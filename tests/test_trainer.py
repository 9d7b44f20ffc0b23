"""Trainer.finetune and how the base callback finds what to freeze."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_TRAINER, Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn

from finetune_strategies import ConfigurationError, Finetuner, Freeze, FreezeUnfreeze, MissingModuleError, Trainer


def test_trainer_is_a_lightning_trainer() -> None:
    assert issubclass(Trainer, pl.Trainer)


def test_finetune_replaces_existing_finetuning_callback_with_warning() -> None:
    old, rec = FreezeUnfreeze(1), Recorder()
    trainer = make_trainer(1, callbacks=[old, rec])
    with pytest.warns(UserWarning, match=r"Replacing fine-tuning callback\(s\) \['FreezeUnfreeze'\] with Freeze"):
        trainer.finetune(TinyClassifier(), loader(), strategy="freeze")
    finetuning = [c for c in trainer.callbacks if isinstance(c, pl.callbacks.BaseFinetuning)]
    assert [type(c) for c in finetuning] == [Freeze]


def test_two_strategies_never_run_at_once() -> None:
    trainer = make_trainer(1, callbacks=[Freeze(), BackboneFinetuning()])
    with pytest.raises(RuntimeError, match="Two fine-tuning callbacks are attached"):
        trainer.fit(TinyClassifier(), loader())


def test_finetune_accepts_dataloaders_by_keyword() -> None:
    model, rec = TinyClassifier(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(
        model, strategy="freeze", train_dataloaders=loader(), val_dataloaders=loader()
    )
    assert not rec.requires_grad[0]["backbone.0.weight"]


def test_finetune_accepts_a_datamodule() -> None:
    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> Any:
            return loader()

    model, rec = TinyClassifier(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(model, Data(), strategy="freeze")
    assert rec.requires_grad[0]["head.weight"]


class NoBackbone(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = self.backbone
        del self.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_missing_backbone_names_class_and_attribute() -> None:
    with pytest.raises(MissingModuleError, match="Cannot tell which modules of NoBackbone are the pretrained backbone"):
        make_trainer(1).finetune(NoBackbone(), loader(), strategy="freeze")


def test_no_freeze_needs_no_backbone(tmp_path: Path) -> None:
    trainer = make_trainer(1, enable_checkpointing=True, default_root_dir=tmp_path)  # writes its options
    trainer.finetune(NoBackbone(), loader(), strategy="no_freeze")
    assert Path(trainer.checkpoint_callback.best_model_path).is_file()


def test_attr_names_select_other_modules() -> None:
    model, rec = NoBackbone(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(model, loader(), strategy="freeze", attr_names="encoder.0")
    trainable = {n for n, flag in rec.requires_grad[0].items() if not flag}
    assert trainable == {"encoder.0.weight", "encoder.0.bias"}


def test_modules_to_freeze_hook_wins() -> None:
    class Hooked(TinyClassifier):
        def modules_to_freeze(self) -> list[nn.Module]:
            return [self.backbone[3], self.head]

    model, rec = Hooked(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(model, loader(), strategy="freeze")
    frozen = {n for n, flag in rec.requires_grad[0].items() if not flag}
    assert frozen == {"backbone.3.weight", "backbone.3.bias", "head.weight", "head.bias"}


def test_bad_modules_to_freeze_hook() -> None:
    class Broken(TinyClassifier):
        def modules_to_freeze(self) -> Any:
            return ["backbone"]

    with pytest.raises(AttributeError, match=r"modules_to_freeze\(\) must return a module"):
        make_trainer(1).finetune(Broken(), loader(), strategy="freeze")


def test_a_finetuner_among_the_callbacks(recorder: Recorder) -> None:
    model = TinyClassifier()
    make_trainer(2, callbacks=[Finetuner(("freeze_unfreeze", 1)), recorder]).fit(model, loader())
    assert not recorder.requires_grad[0]["backbone.0.weight"]  # frozen in epoch 0, as the strategy says
    assert recorder.requires_grad[1]["backbone.0.weight"]
    plain = pl.Trainer(max_epochs=1, callbacks=[Finetuner("freeze")], **QUIET_TRAINER)
    with pytest.raises(ConfigurationError, match=r"Finetuner\(\.\.\.\)\.callback"):
        plain.fit(TinyClassifier(), loader())
    assert plain.global_step == 0


def test_a_subclass_overriding_find_modules_to_freeze_decides_what_is_frozen() -> None:
    class FirstLayerOnly(Freeze):
        def find_modules_to_freeze(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Module]]:
            return [("backbone.0", pl_module.backbone[0])]

    model, rec = TinyClassifier(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(model, loader(), strategy=FirstLayerOnly())
    frozen = {name for name, trains in rec.requires_grad[0].items() if not trains}
    assert frozen == {"backbone.0.weight", "backbone.0.bias"}
