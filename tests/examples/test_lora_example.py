"""``examples/lora_vit.py`` runs end to end, as a user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from ddp_helpers import run_script

pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lora_vit.py"


def test_lora_vit_example(tmp_path: Path) -> None:
    args = ["--epochs", "2", "--unfreeze_epoch", "1", "--depth", "1", "--out", str(tmp_path)]
    result = run_script(str(EXAMPLE), *args, timeout=300)
    out = result.stdout
    assert "epoch=0.ckpt" in out
    assert "frozen tensors left out" in out
    assert "epoch=1.ckpt" in out
    assert ", 0 frozen tensors left out" in out.split("epoch=1.ckpt")[1].splitlines()[0]
    assert "loaded epoch=0.ckpt" in out
    assert "timm loads it: True" in out
