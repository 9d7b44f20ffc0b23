"""Regression tests for the anchors' failures (ANCHORS.md); each would fail on the anchor's behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning, ModelCheckpoint
from torch import nn
from torch.optim import lr_scheduler

from finetune_strategies import Finetuner, Freeze, FreezeUnfreeze


# --- 5a: optimizer membership by identity -------------------------------------------------------
class ZeroBiasModel(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():  # equal values, distinct tensors
            self.head.bias.zero_()
            self.backbone[3].bias.zero_()


def test_membership_is_by_identity_not_value() -> None:
    model, rec = ZeroBiasModel(), Recorder()
    bias = model.backbone[3].bias
    optimizer = torch.optim.SGD([model.head.weight, torch.nn.Parameter(torch.zeros(8))], lr=0.1)
    # The anchor compares by value and drops the zero bias: this is what we must not do.
    assert BaseFinetuning.filter_on_optimizer(optimizer, [bias]) == []
    assert FreezeUnfreeze.filter_on_optimizer(optimizer, [bias]) == [bias]

    make_trainer(3, callbacks=[rec]).finetune(model, loader(), strategy=("freeze_unfreeze", 1))
    assert id(bias) in rec.groups[1][1]
    assert not torch.equal(rec.weights[0]["backbone.3.bias"], rec.weights[2]["backbone.3.bias"])


# --- 5b: resume after an unfreeze ----------------------------------------------------------------
def lambda_schedule(optimizer: torch.optim.Optimizer) -> Any:
    return lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)


def fit_with_checkpoints(
    tmp_path: Path, callback: BaseFinetuning, epochs: int, scheduler: Any = lambda_schedule
) -> TinyClassifier:
    model = TinyClassifier(scheduler=scheduler)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = make_trainer(epochs, callbacks=[checkpoints, callback], enable_checkpointing=True)
    trainer.fit(model, loader())
    return model


RESUMABLE = {
    "freeze_unfreeze": (("freeze_unfreeze", 1), 2),
    "freeze_unfreeze_deepspeed": (("freeze_unfreeze_deepspeed", 1), 2),
    "unfreeze_milestones": (("unfreeze_milestones", ((1, 3), 1)), 2),
}


@pytest.mark.parametrize("name", sorted(RESUMABLE))
def test_resume_after_unfreeze_matches_uninterrupted_run(tmp_path: Path, name: str) -> None:
    spec, groups = RESUMABLE[name]
    full = fit_with_checkpoints(tmp_path, Finetuner(spec).callback, epochs=5)
    full_optimizer = full.trainer.optimizers[0].state_dict()

    resumed, rec = TinyClassifier(scheduler=lambda_schedule), Recorder()
    trainer = make_trainer(5, callbacks=[rec])
    trainer.finetune(resumed, loader(), strategy=spec, ckpt_path=tmp_path / "epoch=1.ckpt")

    trainable = {n for n, flag in rec.requires_grad[0].items() if flag}
    assert {"backbone.3.weight", "backbone.3.bias"} <= trainable, "unfrozen modules must train again after resume"
    assert len(rec.groups[0]) == groups, "each param group restored exactly once"
    resumed_optimizer = trainer.optimizers[0].state_dict()
    assert resumed_optimizer["param_groups"] == full_optimizer["param_groups"]
    assert full_optimizer["state"].keys() == resumed_optimizer["state"].keys()
    for key, state in full_optimizer["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed_optimizer["state"][key]["momentum_buffer"])
    for tensor_name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[tensor_name]), tensor_name


def test_checkpoint_records_the_unfreeze(tmp_path: Path) -> None:
    fit_with_checkpoints(tmp_path, Finetuner(("unfreeze_milestones_deepspeed", ((1, 3), 1))).callback, epochs=2)
    before, after = (torch.load(tmp_path / f"epoch={e}.ckpt", weights_only=False) for e in (0, 1))
    (state_before,) = (v for k, v in before["callbacks"].items() if k.startswith("UnfreezeMilestones"))
    (state_after,) = (v for k, v in after["callbacks"].items() if k.startswith("UnfreezeMilestones"))
    assert state_before["started_phases"] == []
    assert state_after["started_phases"] == [0]
    assert state_after["unfrozen_modules"] == [["backbone.3", True]]
    # DeepSpeed-style groups never change the optimizer's shape: 3 groups in both checkpoints.
    assert len(before["optimizer_states"][0]["param_groups"]) == len(after["optimizer_states"][0]["param_groups"]) == 3
    assert [g["lr"] for g in after["optimizer_states"][0]["param_groups"]][1:] == [pytest.approx(0.01 * 0.9**2), 0.0]


def test_anchor_resume_leaves_backbone_frozen(tmp_path: Path) -> None:
    """Proves the test above has power: Lightning's callback resumes with a frozen backbone."""
    # (No scheduler: the anchor cannot even run LambdaLR past its unfreeze.)
    fit_with_checkpoints(tmp_path, BackboneFinetuning(unfreeze_backbone_at_epoch=1), epochs=2, scheduler=None)
    model, rec = TinyClassifier(), Recorder()
    trainer = make_trainer(3, callbacks=[rec, BackboneFinetuning(unfreeze_backbone_at_epoch=1)])
    trainer.fit(model, loader(), ckpt_path=tmp_path / "epoch=1.ckpt")
    assert not rec.requires_grad[0]["backbone.0.weight"]


# --- 5c: LR schedulers with a group added mid-run ------------------------------------------------
SCHEDULERS = {
    "StepLR": lambda o: {"scheduler": lr_scheduler.StepLR(o, step_size=3, gamma=0.5), "interval": "step"},
    "CosineAnnealingLR": lambda o: {
        "scheduler": lr_scheduler.CosineAnnealingLR(o, T_max=10),
        "interval": "step",
    },
    "LinearLR": lambda o: {
        "scheduler": lr_scheduler.LinearLR(o, 0.5, 1.0, total_iters=10),
        "interval": "step",
    },
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=10.0),
    "LambdaLR": lambda o: {"scheduler": lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s)), "interval": "step"},
    "MultiplicativeLR": lambda o: {
        "scheduler": lr_scheduler.MultiplicativeLR(o, lambda s: 0.95),
        "interval": "step",
    },
    "OneCycleLR": lambda o: {
        "scheduler": lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=16),
        "interval": "step",
    },
    "CosineAnnealingWarmRestarts": lambda o: {
        "scheduler": lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3),
        "interval": "step",
    },
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    "SequentialLR": lambda o: {
        "scheduler": lr_scheduler.SequentialLR(
            o,
            [lr_scheduler.LinearLR(o, 0.1, total_iters=3), lr_scheduler.LambdaLR(o, lambda s: 0.9**s)],
            milestones=[3],
        ),
        "interval": "step",
    },
}


@pytest.mark.parametrize("strategy", ["freeze_unfreeze", "freeze_unfreeze_deepspeed"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_new_group_follows_group_zero_scaled(name: str, strategy: str) -> None:
    model, rec = TinyClassifier(scheduler=SCHEDULERS[name]), Recorder()
    make_trainer(4, callbacks=[rec]).finetune(model, loader(), strategy=(strategy, 2))
    after_unfreeze = rec.step_lrs[8:]  # 4 steps per epoch
    assert len(after_unfreeze) == 8
    for lr0, lr1 in after_unfreeze:
        assert lr1 == pytest.approx(lr0 / 10.0, rel=1e-9, abs=1e-15)
    assert len({lrs[0] for lrs in rec.step_lrs}) > 1, "the scheduler should have changed the lr"


def test_anchor_breaks_lambda_lr_after_unfreeze() -> None:
    """Plain ``BaseFinetuning`` adds a group that LambdaLR has no lambda for. torch 2.10 and later raise
    (``zip()`` over groups and lambdas is strict); older torch zips the group away, so its lr never
    follows the schedule."""

    class PlainUnfreeze(BaseFinetuning):
        def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
            self.freeze(pl_module.backbone)

        def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
            if epoch == 1:
                self.unfreeze_and_add_param_group(pl_module.backbone, optimizer)

    model, rec = TinyClassifier(scheduler=SCHEDULERS["LambdaLR"]), Recorder()
    raised: ValueError | None = None
    try:
        make_trainer(2, callbacks=[PlainUnfreeze(), rec]).fit(model, loader())
    except ValueError as error:
        raised = error
    if raised is not None:
        assert "zip" in str(raised)
        return
    after_unfreeze = rec.step_lrs[4:]  # 4 steps per epoch
    assert len({lr0 for lr0, _ in after_unfreeze}) == 4  # group 0 follows the schedule
    assert len({lr1 for _, lr1 in after_unfreeze}) == 1  # the new group is stuck at its first lr


# --- 5d: BatchNorm policy -------------------------------------------------------------------------
BN_TENSORS = ("backbone.2.weight", "backbone.2.bias", "backbone.2.running_mean", "backbone.2.running_var")


def changed_bn_tensors(**options: Any) -> tuple[set[str], Recorder]:
    model, rec = TinyClassifier(), Recorder()
    make_trainer(2, callbacks=[rec]).finetune(model, loader(), strategy="freeze", **options)
    return {t for t in BN_TENSORS if not torch.equal(rec.initial[t], rec.weights[-1][t])}, rec


def test_train_bn_true_trains_bn_affine_and_stats() -> None:
    changed, rec = changed_bn_tensors(train_bn=True)
    assert changed == set(BN_TENSORS)
    assert rec.bn_training[0]["backbone.2"]


def test_train_bn_false_freezes_affine() -> None:
    changed, rec = changed_bn_tensors(train_bn=False)
    assert changed == set()  # affine frozen, running stats not tracked (batch statistics used)
    assert rec.bn_training[0]["backbone.2"]


def test_bn_eval_uses_running_statistics() -> None:
    changed, rec = changed_bn_tensors(train_bn=False, bn_eval=True)
    assert changed == set()
    assert not any(rec.bn_training[epoch]["backbone.2"] for epoch in range(2))


def test_bn_eval_with_trainable_affine() -> None:
    changed, rec = changed_bn_tensors(train_bn=True, bn_eval=True)
    assert changed == {"backbone.2.weight", "backbone.2.bias"}
    assert not rec.bn_training[1]["backbone.2"]


def test_bn_after_unfreeze_with_train_bn_false() -> None:
    model, rec = TinyClassifier(), Recorder()
    make_trainer(3, callbacks=[rec]).finetune(
        model, loader(), strategy=("freeze_unfreeze", 1), train_bn=False, bn_eval=True
    )
    assert not rec.bn_training[0]["backbone.2"]
    assert rec.bn_training[1]["backbone.2"], "unfrozen BatchNorm goes back to train mode"
    assert not rec.requires_grad[2]["backbone.2.weight"], "train_bn=False keeps the affine frozen"
    assert torch.equal(rec.initial["backbone.2.weight"], rec.weights[-1]["backbone.2.weight"])
    assert not torch.equal(rec.weights[0]["backbone.2.running_mean"], rec.weights[-1]["backbone.2.running_mean"])


# --- 5e: keyword arguments reach the right place --------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: Freeze(train_bn=False),
        lambda: Finetuner("freeze", train_bn=False).callback,
        lambda: Finetuner({"strategy": "freeze", "train_bn": False}).callback,
        lambda: Finetuner(("freeze_unfreeze", 5), train_bn=False).callback,
    ],
)
def test_train_bn_false_reaches_the_callback(make: Any) -> None:
    callback = make()
    assert callback.train_bn is False
    model, rec = TinyClassifier(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(model, loader(), strategy=callback)
    assert not rec.requires_grad[0]["backbone.2.weight"]
    assert torch.equal(rec.initial["backbone.2.weight"], rec.weights[0]["backbone.2.weight"])


def test_finetune_train_bn_keyword() -> None:
    model, rec = TinyClassifier(), Recorder()
    make_trainer(1, callbacks=[rec]).finetune(model, loader(), strategy="freeze", train_bn=False)
    assert not rec.requires_grad[0]["backbone.2.weight"]


def test_positional_misuse_is_rejected() -> None:
    with pytest.raises(TypeError, match="train_bn"):
        Freeze("backbone", 5)  # type: ignore[arg-type]


# --- 5f: several optimizers ---------------------------------------------------------------------
class TwoOptimizers(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.aux = nn.Linear(8, 2)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        first, second = self.optimizers()  # type: ignore[misc]
        features = self.backbone(x)
        loss = nn.functional.cross_entropy(self.head(features), y) + nn.functional.cross_entropy(self.aux(features), y)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        return (
            torch.optim.SGD([*self.head.parameters(), *trainable], lr=0.1),
            torch.optim.SGD(self.aux.parameters(), lr=0.05),
        )


@pytest.mark.parametrize("index", [0, 1])
def test_unfrozen_params_go_to_exactly_one_optimizer(index: int) -> None:
    model = TwoOptimizers()
    trainer = make_trainer(2)
    trainer.finetune(model, loader(), strategy=("freeze_unfreeze", 1), optimizer_index=index)
    first, second = trainer.optimizers
    backbone = {id(p) for p in model.backbone[3].parameters()}
    holders = [
        [i for i, group in enumerate(opt.param_groups) if backbone & {id(p) for p in group["params"]}]
        for opt in (first, second)
    ]
    assert holders[index] == [len(trainer.optimizers[index].param_groups) - 1]
    assert holders[1 - index] == []
    assert len(trainer.optimizers[1 - index].param_groups) == 1


def test_optimizer_index_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"optimizer_index=3, but configure_optimizers returned 1"):
        make_trainer(1).finetune(TinyClassifier(), loader(), strategy="freeze", optimizer_index=3)


@pytest.mark.parametrize("strategy", ["freeze_unfreeze", "freeze_unfreeze_deepspeed"])
def test_mid_epoch_resume_keeps_the_scheduled_lr(tmp_path: Path, strategy: str) -> None:
    """A checkpoint inside the unfreeze epoch restores the unfrozen group with its scheduled lr."""

    def per_step(optimizer: torch.optim.Optimizer) -> Any:
        return {"scheduler": lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step), "interval": "step"}

    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1, filename="{step}")
    trainer = make_trainer(2, callbacks=[checkpoints], enable_checkpointing=True)
    trainer.finetune(TinyClassifier(scheduler=per_step), loader(), strategy=(strategy, 1), lr=0.05)
    saved = torch.load(tmp_path / "step=6.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert saved[1]["lr"] == pytest.approx(0.05 * 0.5**2), "unfrozen at step 4 with lr 0.05, then two steps"

    class CaptureLrs(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            self.lrs = getattr(self, "lrs", None) or [g["lr"] for g in trainer.optimizers[0].param_groups]

    capture = CaptureLrs()
    make_trainer(2, callbacks=[capture]).finetune(
        TinyClassifier(scheduler=per_step),
        loader(),
        strategy=(strategy, 1),
        lr=0.05,
        ckpt_path=tmp_path / "step=6.ckpt",
    )
    assert capture.lrs == pytest.approx([g["lr"] for g in saved])


class OneCycle(TinyClassifier):
    """Lightning's recommended OneCycleLR, cycling SGD's momentum, sized by estimated_stepping_batches."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, cycle_momentum=True)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StepMomentum(pl.Callback):
    """Every group's momentum at every optimizer step."""

    def __init__(self) -> None:
        self.momentums: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.momentums.append([group["momentum"] for group in optimizer.param_groups])


def test_a_new_group_takes_the_cycled_momentum_from_its_first_step() -> None:
    steps = StepMomentum()
    make_trainer(3, callbacks=[steps]).finetune(OneCycle(), loader(), strategy=("freeze_unfreeze", 1))
    added = [m for m in steps.momentums if len(m) == 2]
    assert len(added) == 8  # epochs 1 and 2, 4 steps each
    assert all(backbone == head for head, backbone in added)  # the first step too, not the optimizer's 0.9
    assert added[0][0] != 0.9  # the cycle has moved group 0's momentum by then
