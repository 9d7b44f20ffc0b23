"""Code written for Flash's and Lightning's fine-tuning callbacks, run against ours (issue: compatibility gaps).

Each test would fail on release 0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import BaseFinetuning, ModelCheckpoint
from torch.optim import Optimizer

from finetune_strategies import (
    FinetuningStrategy,
    Freeze,
    FreezeUnfreeze,
    NoFreeze,
    ScheduleError,
    StrategySpecTypeError,
    resolve_strategy,
)


# --- the strategy callback runs before the user's callbacks, checkpoints stay last ----------------
class EpochStartChecker(pl.Callback):
    """Records, in on_train_epoch_start, whether the backbone is trainable."""

    def __init__(self) -> None:
        self.backbone_trainable: list[bool] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.backbone_trainable.append(pl_module.backbone[0].weight.requires_grad)


class RecordingCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint subclass that also records what it sees at each epoch start."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[bool] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append(pl_module.backbone[0].weight.requires_grad)


def test_user_callbacks_see_the_unfreeze_of_their_epoch(tmp_path: Path) -> None:
    checker, checkpoint = EpochStartChecker(), RecordingCheckpoint(dirpath=tmp_path)
    trainer = make_trainer(4, callbacks=[checker, checkpoint], enable_checkpointing=True)
    trainer.finetune(TinyClassifier(), loader(), strategy=("freeze_unfreeze", 2))
    assert checker.backbone_trainable == [False, False, True, True]
    assert checkpoint.seen == [False, False, True, True]
    strategy_at = next(i for i, c in enumerate(trainer.callbacks) if isinstance(c, FreezeUnfreeze))
    assert strategy_at < trainer.callbacks.index(checker)
    checkpoints = [i for i, c in enumerate(trainer.callbacks) if isinstance(c, ModelCheckpoint)]
    assert checkpoints == [len(trainer.callbacks) - 1], "checkpoint callbacks stay last"


def test_plain_lightning_order_is_what_finetune_gives() -> None:
    """With plain Lightning, listing the strategy first gives the same: the reference behaviour."""
    checker = EpochStartChecker()
    make_trainer(3, callbacks=[FreezeUnfreeze(2), checker]).fit(TinyClassifier(), loader())
    assert checker.backbone_trainable == [False, False, True]


# --- modules_to_freeze() returning None means nothing to freeze ------------------------------------
class NothingToFreeze(TinyClassifier):
    def modules_to_freeze(self) -> None:
        return None


@pytest.mark.parametrize("spec", ["freeze", ("freeze_unfreeze", 1), "freeze_deepspeed"])
def test_modules_to_freeze_none_trains_the_whole_model(spec: Any) -> None:
    model, rec = NothingToFreeze(), Recorder()
    with pytest.warns(UserWarning, match=r"modules_to_freeze\(\) returned None.*nothing to freeze") as caught:
        make_trainer(2, callbacks=[rec]).finetune(model, loader(), strategy=spec)
    assert sum("returned None" in str(w.message) for w in caught) == 1, "warned once"
    for epoch in range(2):
        assert all(rec.requires_grad[epoch].values()), f"epoch {epoch}"
    for name, tensor in rec.weights[-1].items():
        if name.endswith(("weight", "bias")):
            assert not torch.equal(rec.initial[name], tensor), name


def test_unfreeze_milestones_on_nothing_fails_at_setup() -> None:
    with (
        pytest.warns(UserWarning, match="returned None"),
        pytest.raises(ScheduleError, match=r"last 1 layers, but the backbone has only 0 layers"),
    ):
        make_trainer(2).finetune(NothingToFreeze(), loader(), strategy=("unfreeze_milestones", ((0, 1), 1)))


# --- unfreeze_and_add_param_group: Lightning's static form and the instance form -------------------
class StaticCall(FinetuningStrategy):
    """Unfreezes with Lightning's static call form, on a class (ours, or a subclass) or on the instance."""

    def __init__(self, how: str) -> None:
        super().__init__(train_bn=False)
        self.how = how

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch != 1:
            return
        owner = {"base": FinetuningStrategy, "subclass": StaticCall, "instance": self}[self.how]
        owner.unfreeze_and_add_param_group(
            modules=pl_module.backbone, optimizer=optimizer, lr=0.02, initial_denom_lr=10.0, train_bn=False
        )


@pytest.mark.parametrize("how", ["base", "subclass", "instance"])
def test_static_and_instance_call_forms_train_the_backbone(how: str) -> None:
    model, rec = TinyClassifier(), Recorder()
    make_trainer(3, callbacks=[rec]).finetune(model, loader(), strategy=StaticCall(how))
    names = {id(p): n for n, p in model.named_parameters()}
    unfrozen = {"backbone.0.weight", "backbone.0.bias", "backbone.3.weight", "backbone.3.bias"}
    assert {n for n, flag in rec.requires_grad[1].items() if flag} == unfrozen | {"head.weight", "head.bias"}
    assert [{names[i] for i in g} for g in rec.groups[1]] == [{"head.weight", "head.bias"}, unfrozen]
    assert rec.group_lrs[1] == pytest.approx([0.1, 0.02])
    assert not torch.equal(rec.weights[0]["backbone.0.weight"], rec.weights[2]["backbone.0.weight"])
    assert torch.equal(rec.initial["backbone.2.weight"], rec.weights[2]["backbone.2.weight"]), "train_bn=False"


def test_static_call_is_recorded_for_resume(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    make_trainer(2, callbacks=[checkpoint], enable_checkpointing=True).finetune(
        TinyClassifier(), loader(), strategy=StaticCall("base")
    )
    model, rec = TinyClassifier(), Recorder()
    make_trainer(3, callbacks=[rec]).finetune(
        model, loader(), strategy=StaticCall("base"), ckpt_path=tmp_path / "epoch=1.ckpt"
    )
    assert rec.requires_grad[0]["backbone.0.weight"], "the resumed run makes the unfrozen modules trainable again"
    assert not rec.requires_grad[0]["backbone.2.weight"]


def test_static_call_outside_a_strategy_behaves_as_lightnings() -> None:
    model = TinyClassifier()
    BaseFinetuning.freeze(model.backbone, train_bn=False)
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    FinetuningStrategy.unfreeze_and_add_param_group(model.backbone, optimizer, train_bn=False)
    assert model.backbone[0].weight.requires_grad
    assert not model.backbone[2].weight.requires_grad
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01)
    assert "name" not in optimizer.param_groups[1], "no strategy to name the group after the model"


# --- a warning whenever a parameter passed is already in the optimizer ------------------------------
class PassesTheHead(FinetuningStrategy):
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group([pl_module.backbone, pl_module.head], optimizer, train_bn=False)


def test_warns_when_passed_parameters_were_already_training() -> None:
    with pytest.warns(UserWarning, match=r"2 parameter\(s\) .* already in the optimizer.*0 of them were frozen"):
        make_trainer(2).finetune(TinyClassifier(), loader(), strategy=PassesTheHead(train_bn=False))


class AllParams(TinyClassifier):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)  # frozen parameters included


def test_warns_when_frozen_parameters_were_already_in_the_optimizer() -> None:
    with pytest.warns(UserWarning, match=r"4 parameter\(s\) .* already in the optimizer.*4 of them were frozen"):
        make_trainer(2).finetune(AllParams(), loader(), strategy=("freeze_unfreeze", 1), train_bn=False)


# --- (name, None) for strategies without metadata ---------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "cls"),
    [(("freeze", None), Freeze), (("no_freeze", None), NoFreeze), (("freeze_deepspeed", None), Freeze)],
)
def test_none_metadata_means_no_metadata(spec: Any, cls: type) -> None:
    callback = resolve_strategy(spec)
    assert type(callback) is cls
    assert callback.preregister_groups == spec[0].endswith("_deepspeed")
    rec = Recorder()
    make_trainer(1, callbacks=[rec]).finetune(TinyClassifier(), loader(), strategy=spec)
    assert rec.requires_grad[0]["backbone.0.weight"] == (cls is NoFreeze)


@pytest.mark.parametrize("spec", [("freeze", 3), ("no_freeze", "x"), ("freeze", (1, 2))])
def test_other_metadata_is_still_an_error(spec: Any) -> None:
    with pytest.raises(StrategySpecTypeError, match="takes no metadata"):
        resolve_strategy(spec)
