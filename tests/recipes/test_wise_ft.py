"""WiSE-FT, run for real: the interpolation's end points bitwise, the choice on validation, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import ConfigurationError, StrategySpecError, WiSEFT, wise_ft
from finetune_strategies.recipes.wise_ft import interpolate

SPEC = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1}
PRETRAINED = ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias", "backbone.3.weight"]
BUFFERS = ["backbone.2.running_mean", "backbone.2.running_var"]


def fit(callback: WiSEFT, epochs: int = 3, **kwargs: object) -> tuple[TinyClassifier, Recorder]:
    model, rec = TinyClassifier(), Recorder()
    trainer = make_trainer(epochs, callbacks=[rec, callback])
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=SPEC, **kwargs)  # type: ignore[arg-type]
    return model, rec


@pytest.mark.parametrize("a", [0.0, 1.0])
def test_the_end_points_are_the_pretrained_and_the_fine_tuned_weights_bitwise(a: float) -> None:
    callback = WiSEFT(alphas=a, monitor="val_loss", mode="min", verbose=False)
    model, rec = fit(callback)
    state, start, fine_tuned = model.state_dict(), rec.initial, rec.weights[-1]
    assert callback.result is not None
    assert callback.result.best == a
    for name in PRETRAINED + BUFFERS:
        assert not torch.equal(start[name], fine_tuned[name]), f"{name} trained"
        assert torch.equal(state[name], start[name] if a == 0.0 else fine_tuned[name]), name
    for name in ("head.weight", "head.bias", "backbone.2.num_batches_tracked"):
        assert torch.equal(state[name], fine_tuned[name]), f"{name} keeps its fine-tuned value"


def test_the_best_a_on_validation_is_kept_and_buffers_interpolate_like_weights() -> None:
    model, rec = TinyClassifier(), Recorder()
    trainer = make_trainer(3, callbacks=[rec])
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=SPEC)
    theta0 = {name: rec.initial[name] for name in PRETRAINED + BUFFERS}
    fine_tuned = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = wise_ft(trainer, model, theta0, (0.0, 0.5, 1.0), monitor="val_loss", mode="min", verbose=False)
    scores = result.scores
    assert all(s is not None for s in scores)
    assert len(set(scores)) == 3
    assert result.best == (0.0, 0.5, 1.0)[min(range(3), key=lambda i: scores[i])]  # type: ignore[arg-type,return-value]
    expected = interpolate(theta0, {n: fine_tuned[n] for n in theta0}, result.best)
    for name, tensor in expected.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    middle = interpolate(theta0, fine_tuned, 0.5)
    for name in BUFFERS + PRETRAINED:
        torch.testing.assert_close(middle[name], (theta0[name] + fine_tuned[name]) / 2)
    assert "val_loss" in result.table().columns[1].header  # type: ignore[operator]
    assert trainer.state.fn == "validate"


def test_theta0_survives_a_resume(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    model, rec = TinyClassifier(), Recorder()
    trainer = make_trainer(
        3, callbacks=[rec, checkpoints, WiSEFT(1.0, "val_loss", verbose=False)], enable_checkpointing=True
    )
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=SPEC)

    resumed = TinyClassifier()
    with torch.no_grad():  # another start: a resumed fit must not take theta0 from it
        for param in resumed.backbone.parameters():
            param.add_(1.0)
    callback = WiSEFT(alphas=0.0, monitor="val_loss", verbose=False)
    make_trainer(3, callbacks=[callback]).finetune(
        resumed, loader(), val_dataloaders=loader(16), strategy=SPEC, ckpt_path=tmp_path / "epoch=1.ckpt"
    )
    for name in PRETRAINED + BUFFERS:
        assert torch.equal(resumed.state_dict()[name], rec.initial[name]), name


def test_bad_inputs_are_refused_with_the_reason() -> None:
    with pytest.raises(StrategySpecError, match=r"\[0, 1\]"):
        WiSEFT(alphas=(0.5, 1.5))
    with pytest.raises(StrategySpecError, match="twice"):
        WiSEFT(alphas=(0.5, 0.5))
    model, rec = TinyClassifier(), Recorder()
    trainer = make_trainer(2, callbacks=[rec])
    trainer.finetune(model, loader(), val_dataloaders=loader(16), strategy=SPEC)
    fine_tuned = {n: t.clone() for n, t in model.state_dict().items()}
    theta0 = {name: rec.initial[name] for name in PRETRAINED}
    with pytest.raises(ConfigurationError, match=r"'val_acc', which validation did not log\. Logged: val_loss"):
        wise_ft(trainer, model, theta0, verbose=False)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in fine_tuned.items()), "the model is left as it was"
    with pytest.raises(ConfigurationError, match=r"unknown entries \['encoder.weight'\]"):
        wise_ft(trainer, model, {"encoder.weight": torch.zeros(1)}, monitor="val_loss", verbose=False)
    no_val = make_trainer(2, callbacks=[WiSEFT(verbose=False)])
    with pytest.raises(ConfigurationError, match="this fit has none"):
        no_val.finetune(TinyClassifier(), loader(), strategy=SPEC)
