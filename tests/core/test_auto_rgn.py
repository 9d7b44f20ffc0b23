"""Auto-RGN (``layer_lr="auto_rgn"``), run for real: the lrs each step applies, the groups, the update, the
logged ratios, the schedule left alone, exact resume, and the refusals."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from finetune_strategies import (
    ConfigurationError,
    FinetuningStrategy,
    ResumeMismatchError,
    StrategySpecError,
    describe_schedule,
    resolve_strategy,
)
from finetune_strategies.core.auto_rgn import AutoRGN

AUTO_RGN = {"layer_lr": "auto_rgn"}
LR = 0.5
LAYERS = {"group 0": "head", "backbone.0": "backbone.0", "backbone.1": "backbone.1", "backbone.2": "backbone.2"}
"""Param group name -> the module whose parameters it holds, for :class:`Layered` under ``no_freeze``."""


class Layered(pl.LightningModule):
    """Three Linear layers and a head under plain SGD (lr 0.5, halved every step). ``on_after_backward``
    replaces every gradient by a known one; each step records the lrs it trains with (after the strategy's
    hook), and the weights and gradients it starts from."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)
        self.applied: list[dict[str, float]] = []
        self.before: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_after_backward(self) -> None:
        step = self.trainer.global_step
        for k, (_, param) in enumerate(self.named_parameters()):
            ramp = torch.linspace(-1.0, 1.0, param.numel()).reshape(param.shape)
            param.grad = ramp * (0.3 * (k + 1) + step)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.applied.append({g.get("name") or f"group {i}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
        self.before.append({n: (p.detach().clone(), p.grad.detach().clone()) for n, p in self.named_parameters()})

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=LR)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StepLrs(pl.Callback):
    """The param groups' lrs at the end of every training batch (after the LR scheduler stepped)."""

    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lrs.append({g.get("name") or f"group {i}": g["lr"] for i, g in enumerate(groups)})


def strategy_of(trainer: pl.Trainer) -> FinetuningStrategy:
    (strategy,) = (c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))  # type: ignore[attr-defined]
    return strategy


def expected_ratios(model: Layered, step: int) -> dict[str, float]:
    """``RGN / max RGN`` per group, computed here in float64 from the step's weights and gradients."""
    rgns = {}
    for group, module in LAYERS.items():
        pairs = [model.before[step][n] for n in model.before[step] if n.startswith(f"{module}.")]
        grad = math.sqrt(sum(float(g.double().square().sum()) for _, g in pairs))
        weight = math.sqrt(sum(float(w.double().square().sum()) for w, _ in pairs))
        rgns[group] = grad / weight
    top = max(rgns.values())
    return {group: rgn / top for group, rgn in rgns.items()}


def fit_layered(spec: dict[str, Any], steps: int = 3, **trainer: Any) -> tuple[Layered, StepLrs, pl.Trainer]:
    model, lrs = Layered(), StepLrs()
    run = make_trainer(1, limit_train_batches=steps, callbacks=[lrs], **trainer)
    run.finetune(model, loader(), strategy=spec)
    return model, lrs, run


def test_each_step_trains_every_group_at_its_scheduled_lr_times_rgn_over_the_largest() -> None:
    model, lrs, trainer = fit_layered({"strategy": "no_freeze", **AUTO_RGN})
    plain, plain_lrs, _ = fit_layered({"strategy": "no_freeze", "layer_lr_decay": 1.0})  # the same groups, unscaled
    assert len(model.applied) == 3
    for step, applied in enumerate(model.applied):
        scheduled = LR * 0.5**step
        assert plain.applied[step] == dict.fromkeys(LAYERS, scheduled)
        ratios = expected_ratios(model, step)
        assert max(ratios.values()) == 1.0
        assert min(ratios.values()) < 0.6  # the scaling is not a no-op
        assert applied == pytest.approx({g: scheduled * r for g, r in ratios.items()}, rel=1e-6), step
    assert strategy_of(trainer).layer_lr_ratios == pytest.approx(expected_ratios(model, 2), rel=1e-6)
    # after every step the scheduled lrs are back, exactly: the StepLR schedule is the plain run's
    assert lrs.lrs == plain_lrs.lrs == [dict.fromkeys(LAYERS, LR * 0.5 ** (s + 1)) for s in range(3)]


def test_the_weights_after_a_step_are_sgd_with_the_scaled_lrs() -> None:
    model, _, _ = fit_layered({"strategy": "no_freeze", **AUTO_RGN}, steps=2)
    after = dict(model.named_parameters())
    ratios = expected_ratios(model, 1)
    for group, module in LAYERS.items():
        for name, (weight, grad) in model.before[1].items():
            if name.startswith(f"{module}."):
                expected = weight.double() - LR * 0.5 * ratios[group] * grad.double()
                torch.testing.assert_close(after[name].detach().double(), expected, rtol=0, atol=1e-6, msg=name)


def test_every_trainable_layer_is_a_group_of_its_own_and_frozen_weights_stay_bitwise(recorder: Recorder) -> None:
    model = TinyClassifier()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}  # BatchNorm's statistics move
    spec = {"strategy": "gradual_unfreeze", "start_epoch": 1, "every": 1, "train_bn": False, **AUTO_RGN}
    make_trainer(4, callbacks=[recorder]).finetune(model, loader(), strategy=spec)
    ids = {name: [id(p) for p in model.get_submodule(name).parameters()] for name in ("backbone.0", "backbone.3")}
    head = [id(p) for p in model.head.parameters()]
    assert recorder.groups[0] == [head]  # epoch 0: the head alone
    assert recorder.groups[1] == [head, ids["backbone.3"]]  # the top layer, in a group of its own
    assert recorder.groups[2] == recorder.groups[1]  # the BatchNorm layer, kept frozen by train_bn=False
    assert recorder.groups[3] == [head, ids["backbone.3"], ids["backbone.0"]]
    assert recorder.group_names[3] == [None, "backbone.3", "backbone.0"]
    for name, tensor in initial.items():
        frozen_until = {"backbone.3": 1, "backbone.0": 3}.get(name.rsplit(".", 1)[0])
        if name.startswith("backbone.2."):  # BatchNorm with train_bn=False: frozen the whole run
            assert torch.equal(recorder.weights[3][name], tensor), name
        elif frozen_until is not None:
            assert torch.equal(recorder.weights[frozen_until - 1][name], tensor), name
            assert not torch.equal(recorder.weights[frozen_until][name], tensor), name


def test_the_csv_logger_gets_every_groups_ratio_every_logged_step(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = make_trainer(2, logger=logger, log_every_n_steps=1, accumulate_grad_batches=2)
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, **AUTO_RGN}
    trainer.finetune(TinyClassifier(), loader(), strategy=spec)
    with open(tmp_path / "run" / "version_0" / "metrics.csv", newline="") as file:
        rows = [r for r in csv.DictReader(file) if r.get("auto_rgn/group 0")]
    assert len(rows) == 4  # 4 batches an epoch, 2 accumulated per step: 2 steps an epoch, each logged once
    columns = ["auto_rgn/group 0", "auto_rgn/backbone.0", "auto_rgn/backbone.3"]
    for row in rows:
        values = [float(row[c]) for c in columns if row[c]]
        assert max(values) == 1.0, row
        assert all(0.0 < v <= 1.0 for v in values), row
    assert all(not row["auto_rgn/backbone.0"] for row in rows[:2])  # epoch 0: only the head trains
    last = {c.removeprefix("auto_rgn/"): float(rows[-1][c]) for c in columns}
    assert last == pytest.approx(strategy_of(trainer).layer_lr_ratios, rel=1e-6)


def step_scheduler(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5), "interval": "step"}


def test_checkpoints_hold_the_scheduled_lrs_and_a_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, **AUTO_RGN}
    every_step = ModelCheckpoint(tmp_path / "steps", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    every_epoch = ModelCheckpoint(tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = TinyClassifier(scheduler=step_scheduler)
    trainer = make_trainer(4, callbacks=[every_step, every_epoch], enable_checkpointing=True)
    trainer.finetune(full, loader(), strategy=spec)
    assert strategy_of(trainer).layer_lr_ratios["backbone.0"] < 1.0

    plain = make_trainer(2, callbacks=[(lrs := StepLrs())])  # the same groups and schedule, unscaled
    plain.finetune(TinyClassifier(scheduler=step_scheduler), loader(), strategy={**spec, "layer_lr": None})
    for step in range(1, 9):
        saved = torch.load(tmp_path / "steps" / f"step={step}.ckpt", weights_only=True)["optimizer_states"][0]
        assert [g["lr"] for g in saved["param_groups"]][:1] == [lrs.lrs[step - 1]["group 0"]], step
        if step > 4:  # the backbone's layers, in groups of their own, at the schedule's lrs
            assert [g["lr"] for g in saved["param_groups"]][1:] == [lrs.lrs[step - 1]["backbone"]] * 2, step

    resumed = TinyClassifier(scheduler=step_scheduler)
    make_trainer(4).finetune(resumed, loader(), strategy=spec, ckpt_path=tmp_path / "epoch=1.ckpt")
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_a_resume_with_another_layer_lr_is_refused(tmp_path: Path) -> None:
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, **AUTO_RGN}
    checkpoints = ModelCheckpoint(tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    make_trainer(2, callbacks=[checkpoints], enable_checkpointing=True).finetune(
        TinyClassifier(), loader(), strategy=spec
    )
    with pytest.raises(ResumeMismatchError, match=r"layer_lr: saved 'auto_rgn', now None"):
        make_trainer(3).finetune(
            TinyClassifier(), loader(), strategy={**spec, "layer_lr": None}, ckpt_path=tmp_path / "epoch=1.ckpt"
        )


@pytest.mark.parametrize("value", ["rgn", "AUTO_RGN", True, 1.0])
def test_a_bad_layer_lr_is_refused_with_what_is_expected(value: Any) -> None:
    with pytest.raises(StrategySpecError, match=rf"`layer_lr` must be None or one of 'auto_rgn', got {value!r}"):
        resolve_strategy({"strategy": "freeze", "layer_lr": value})


def test_fsdp1_is_refused_at_setup() -> None:
    """FSDP1 needs CUDA here, so its strategy object is checked as setup checks it; DeepSpeed's refusal runs a
    real ZeRO-2 fit on CPU (tests/distributed/test_deepspeed_zero.py)."""
    trainer: Any = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(
        ConfigurationError, match='FreezeUnfreeze with layer_lr="auto_rgn" is not supported under fsdp1'
    ):
        AutoRGN("auto_rgn").check(trainer, "FreezeUnfreeze")
    AutoRGN(None).check(trainer, "FreezeUnfreeze")  # off: nothing to refuse


def test_a_step_with_non_finite_gradients_is_not_scaled() -> None:
    class Overflow(Layered):
        def on_after_backward(self) -> None:
            super().on_after_backward()
            if self.trainer.global_step == 0:
                self.head.weight.grad[0, 0] = math.inf  # what AMP's GradScaler would skip

    model, lrs = Overflow(), StepLrs()
    make_trainer(1, limit_train_batches=2, callbacks=[lrs]).finetune(
        model, loader(), strategy={"strategy": "no_freeze", **AUTO_RGN}
    )
    assert model.applied[0] == dict.fromkeys(LAYERS, LR)
    assert max(model.applied[1].values()) == LR * 0.5
    assert min(model.applied[1].values()) < LR * 0.25


def test_the_plan_says_that_auto_rgn_scales_the_lrs_it_shows() -> None:
    plan = describe_schedule(
        TinyClassifier(), {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, **AUTO_RGN}, max_epochs=2
    )
    assert 'layer_lr="auto_rgn": the lrs shown are the scheduled ones' in str(plan)
    assert [g.name for g in plan.epochs[1].groups] == [None, "backbone.0", "backbone.3"]
    assert "auto_rgn" not in str(describe_schedule(TinyClassifier(), ("freeze_unfreeze", 1), max_epochs=2))
