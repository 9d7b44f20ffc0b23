"""``describe_schedule`` runs the strategy's own code: its plan equals what a real fit does."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import Recorder, TinyClassifier, TinyViT, image_loader, loader, make_trainer
from torch.optim import lr_scheduler

from finetune_strategies import ConfigurationError, describe_schedule

SPECS: dict[str, Any] = {
    "freeze_unfreeze": ("freeze_unfreeze", 2),
    "unfreeze_milestones": ("unfreeze_milestones", ((1, 3), 1)),
    "backbone_finetuning": {"strategy": "backbone_finetuning", "unfreeze_backbone_at_epoch": 1, "should_align": False},
    "gradual_decay": {"strategy": "gradual_unfreeze", "start_epoch": 1, "layer_lr_decay": 0.5},
    "phases": {
        "strategy": "phases",
        "phases": [{"epoch": 1, "modules": ["backbone.3"], "lr": 0.05}, {"epoch": 2, "layer_lr_decay": 0.5}],
    },
    "no_freeze_decay": {"strategy": "no_freeze", "layer_lr_decay": 0.5},
    "surgical": {"strategy": "surgical", "layers": "1:"},
    "deepspeed_decay": {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 2, "layer_lr_decay": 0.5},
}


def epoch_cosine(optimizer: torch.optim.Optimizer) -> Any:
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("train_bn", [True, False])
def test_plan_equals_a_real_run(name: str, train_bn: bool) -> None:
    spec = SPECS[name]
    planned = describe_schedule(TinyClassifier(scheduler=epoch_cosine), spec, max_epochs=4, train_bn=train_bn)
    model, rec = TinyClassifier(scheduler=epoch_cosine), Recorder()
    make_trainer(4, callbacks=[rec]).finetune(model, loader(), strategy=spec, train_bn=train_bn)
    sizes = {id(p): p.numel() for p in model.parameters()}
    for epoch, plan in enumerate(planned.epochs):
        assert [g.name for g in plan.groups] == rec.group_names[epoch], f"epoch {epoch}"
        assert [g.lr for g in plan.groups] == pytest.approx(rec.group_lrs[epoch]), f"epoch {epoch}"
        assert [g.params for g in plan.groups] == [sum(sizes[i] for i in ids) for ids in rec.groups[epoch]]
        trainable = sum(p.numel() for n, p in model.named_parameters() if rec.requires_grad[epoch][n])
        assert plan.trainable_params == trainable, f"epoch {epoch}"


def test_plan_leaves_the_model_as_it_was() -> None:
    model = TinyClassifier()
    model.backbone[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    describe_schedule(model, ("freeze_unfreeze", 1), max_epochs=3, train_bn=False, bn_eval=True)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.backbone[2].track_running_stats
    assert not model.backbone[2].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plan_of_a_vit_with_layer_decay_names_every_layer() -> None:
    plan = describe_schedule(TinyViT(), "gradual_unfreeze", max_epochs=6, layer_lr_decay=0.5)
    assert plan.epochs[1].started == ["backbone.blocks.3 + backbone.norm"]
    assert plan.epochs[5].started == ["backbone.stem"]
    assert [g.name for g in plan.epochs[5].groups][1:] == [
        "backbone.blocks.3 + backbone.norm",
        "backbone.blocks.2",
        "backbone.blocks.1",
        "backbone.blocks.0",
        "backbone.stem",
    ]
    assert [g.lr for g in plan.epochs[5].groups][1:] == pytest.approx([0.01 * 0.5**k for k in range(5)])
    assert ("backbone", sum(p.numel() for p in TinyViT().backbone.parameters())) in plan.epochs[5].training
    assert "backbone.stem" in str(plan)


def test_plan_with_an_optimizer_factory_and_a_model_that_needs_a_trainer() -> None:
    class NeedsTrainer(TinyClassifier):
        def configure_optimizers(self) -> Any:
            assert self.trainer.max_epochs == 3
            return super().configure_optimizers()

    plan = describe_schedule(NeedsTrainer(), ("freeze_unfreeze", 1), max_epochs=3)
    assert [g.lr for g in plan.epochs[1].groups] == pytest.approx([0.1, 0.01])
    plan = describe_schedule(
        TinyClassifier(), ("freeze_unfreeze", 1), max_epochs=2, optimizer=lambda p: torch.optim.SGD(p, lr=1.0)
    )
    assert [g.lr for g in plan.epochs[1].groups] == pytest.approx([1.0, 0.1])


def test_plan_errors() -> None:
    class Broken(TinyClassifier):
        def configure_optimizers(self) -> Any:
            raise RuntimeError("needs data")

    with pytest.raises(ConfigurationError, match=r"could not build Broken's optimizer.*optimizer=lambda"):
        describe_schedule(Broken(), "freeze", max_epochs=2)
    with pytest.raises(ValueError, match="max_epochs"):
        describe_schedule(TinyClassifier(), "freeze", max_epochs=0)


def test_plan_of_a_vit_equals_a_real_run() -> None:
    """On a timm ViT, where layers are blocks, too."""
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "layer_lr_decay": 0.7}
    planned = describe_schedule(TinyViT(), spec, max_epochs=2)
    rec = Recorder()
    make_trainer(2, callbacks=[rec]).finetune(TinyViT(), image_loader(), strategy=spec)
    assert [[g.name for g in e.groups] for e in planned.epochs] == rec.group_names
    assert [[g.lr for g in e.groups] for e in planned.epochs] == [pytest.approx(lrs) for lrs in rec.group_lrs]


def test_the_plan_answers_estimated_stepping_batches_for_one_cycle_lr() -> None:
    class OneCycle(TinyClassifier):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)
            total = self.trainer.estimated_stepping_batches  # a plain trainer without data says -1
            scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class FirstStepLrs(pl.Callback):
        def __init__(self) -> None:
            self.lrs: list[list[float]] = []

        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if args[-1] == 0:
                self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    plan = describe_schedule(OneCycle(), ("freeze_unfreeze", 1), max_epochs=3, steps_per_epoch=4)
    real = FirstStepLrs()
    make_trainer(3, callbacks=[real]).finetune(OneCycle(), loader(), strategy=("freeze_unfreeze", 1))  # 4 steps
    planned = [[g.lr for g in epoch.groups] for epoch in plan.epochs]
    assert planned == [pytest.approx(lrs) for lrs in real.lrs]
