"""L2-SP, run for real: the penalty's gradient, which parameters it reaches, its checks and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import FinetuningStrategy, StrategySpecError, resolve_strategy


class NoLoss(TinyClassifier):
    """The data loss switched off: every gradient is the penalty's."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return 0.0 * super().training_step(batch, batch_idx)


class Shift(pl.Callback):
    """Moves every weight away from where the fit started (after the strategy took ``w0``)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for param in pl_module.parameters():
                param.add_(torch.randn(param.shape, generator=generator))


class Gradients(pl.Callback):
    """At every optimizer step, after the strategy's hook: each parameter, and its gradient."""

    def __init__(self) -> None:
        self.steps: list[dict[str, tuple[torch.Tensor, torch.Tensor | None]]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.steps.append(
            {
                n: (p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                for n, p in pl_module.named_parameters()
            }
        )


def test_the_gradient_is_alpha_times_w_minus_w0_and_beta_times_w_on_the_head() -> None:
    model, grads = NoLoss(), Gradients()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(3, callbacks=[Shift(), grads])
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "l2_sp": 0.5, "l2_sp_beta": 0.25}
    trainer.finetune(model, loader(), strategy=spec)
    assert len(grads.steps) == 12
    for step, params in enumerate(grads.steps):
        for name, (weight, grad) in params.items():
            if name.startswith("head."):
                expected: torch.Tensor | None = 0.25 * weight
            elif step >= 4 or name.startswith("backbone.2."):  # unfrozen at epoch 1; BatchNorm trains throughout
                expected = 0.5 * (weight - w0[name])
            else:
                expected = None  # frozen: no gradient, no penalty
            if expected is None:
                assert grad is None, (step, name)
            else:
                assert grad is not None
                assert not torch.equal(weight, w0[name])
                torch.testing.assert_close(grad, expected, rtol=0, atol=0, msg=f"step {step}, {name}")


def test_the_pull_brings_the_backbone_back_to_w0_and_leaves_the_head() -> None:
    model = NoLoss()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(20, callbacks=[Shift()])
    trainer.finetune(model, loader(), strategy={"strategy": "no_freeze", "l2_sp": 1.0})
    (strategy,) = (c for c in trainer.callbacks if isinstance(c, FinetuningStrategy))
    assert strategy.l2_sp_bytes == sum(p.numel() * 4 for n, p in model.named_parameters() if n.startswith("backbone."))
    for name, param in model.named_parameters():
        distance = (param - w0[name]).abs().max().item()
        if name.startswith("backbone."):
            assert distance < 0.05, (name, distance)  # shifted by N(0, 1) noise at the start
        else:
            assert distance > 0.1, (name, distance)  # no data loss, no beta: the head stays shifted


def test_l2_sp_options_are_checked() -> None:
    with pytest.raises(StrategySpecError, match=r"l2_sp_beta.*give l2_sp"):
        resolve_strategy({"strategy": "freeze", "l2_sp_beta": 0.1})
    with pytest.raises(StrategySpecError, match="l2_sp"):
        resolve_strategy({"strategy": "freeze_unfreeze", "l2_sp": -1.0})
    assert resolve_strategy({"strategy": "gradual_unfreeze", "l2_sp": 0.01}).l2_sp == 0.01  # type: ignore[attr-defined]


def test_resume_with_l2_sp_equals_an_uninterrupted_run_and_keeps_the_first_w0(tmp_path: Path) -> None:
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "l2_sp": 2.0, "l2_sp_beta": 0.1}
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = TinyClassifier()
    make_trainer(4, callbacks=[checkpoints], enable_checkpointing=True).finetune(full, loader(), strategy=spec)
    saved = torch.load(tmp_path / "epoch=1.ckpt", weights_only=True)["callbacks"]
    (state,) = (s for s in saved.values() if "l2_sp_start" in s)
    assert torch.equal(state["l2_sp_start"]["backbone.0.weight"], TinyClassifier().backbone[0].weight)

    resumed = TinyClassifier()
    with torch.no_grad():  # another start: if the resumed fit took w0 from this model, it would pull elsewhere
        for param in resumed.parameters():
            param.mul_(-1.5)
    make_trainer(4).finetune(resumed, loader(), strategy=spec, ckpt_path=tmp_path / "epoch=1.ckpt")
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name

    another = TinyClassifier()
    make_trainer(4).finetune(another, loader(), strategy={**spec, "l2_sp": 0.5}, ckpt_path=tmp_path / "epoch=1.ckpt")
    assert not torch.equal(another.backbone[0].weight, full.backbone[0].weight), "the penalty really acts after epoch 1"


def test_resuming_with_l2_sp_from_a_checkpoint_without_it_warns(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    spec: dict[str, Any] = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1}
    make_trainer(2, callbacks=[checkpoints], enable_checkpointing=True).finetune(
        TinyClassifier(), loader(), strategy=spec
    )
    with pytest.warns(UserWarning, match="holds no start weights .* the weights it resumes with count"):
        make_trainer(3).finetune(
            TinyClassifier(), loader(), strategy={**spec, "l2_sp": 0.1}, ckpt_path=tmp_path / "epoch=1.ckpt"
        )
