"""The *_deepspeed strategies under the real DeepSpeed engine (CUDA only; skipped elsewhere)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer

REASON = "real DeepSpeed needs CUDA and the `deepspeed` package (Lightning's DeepSpeedStrategy is CUDA-only)"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None, reason=REASON
)


@pytest.mark.parametrize("stage", [1, 2])
def test_freeze_unfreeze_deepspeed_trains_unfrozen_params(stage: int) -> None:
    model, rec = TinyClassifier(optimizer="adamw"), Recorder()
    trainer = make_trainer(
        3, callbacks=[rec], accelerator="gpu", strategy=f"deepspeed_stage_{stage}", deterministic=False
    )
    trainer.finetune(model, loader(), strategy=("freeze_unfreeze_deepspeed", 1))
    for name in ("backbone.0.weight", "backbone.3.weight"):
        assert torch.equal(rec.initial[name].cpu(), rec.weights[0][name].cpu()), f"{name} moved while frozen"
        assert not torch.equal(rec.weights[0][name].cpu(), rec.weights[2][name].cpu()), f"{name} never trained"
    assert not torch.equal(rec.initial["head.weight"].cpu(), rec.weights[0]["head.weight"].cpu())
