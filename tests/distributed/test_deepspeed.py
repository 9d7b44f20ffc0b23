"""The *_deepspeed strategies under the real DeepSpeed engine on one GPU, ZeRO stage 1, 2 and 3 (CUDA only;
skipped elsewhere). ``test_deepspeed_zero.py`` runs 2 ranks, on CPU where there is no GPU per rank."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import TinyClassifier, loader, make_trainer
from ddp_helpers import Dump

REASON = "real DeepSpeed needs CUDA and the `deepspeed` package (Lightning's DeepSpeedStrategy is CUDA-only)"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None, reason=REASON
)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_freeze_unfreeze_deepspeed_trains_unfrozen_params(stage: int, tmp_path: Path) -> None:
    """Under ZeRO-3 the parameters are partitioned; ``Dump`` gathers them whole."""
    model, dump = TinyClassifier(optimizer="adamw"), Dump(tmp_path / "run")
    trainer = make_trainer(
        3, callbacks=[dump], accelerator="gpu", strategy=f"deepspeed_stage_{stage}", deterministic=False
    )
    trainer.finetune(model, loader(), strategy=("freeze_unfreeze_deepspeed", 1))
    initial, epochs = dump.initial, dump.epochs
    for name in ("backbone.0.weight", "backbone.3.weight"):
        assert torch.equal(initial[name], epochs[0][name]), f"{name} moved while frozen"
        assert not torch.equal(epochs[0][name], epochs[2][name]), f"{name} never trained"
    assert not torch.equal(initial["head.weight"], epochs[0]["head.weight"])
