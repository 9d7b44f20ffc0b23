"""``finetune-strategies fit --strategy lora ... --export``: a timm ViT fine-tuned with LoRA, exported merged."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from image_helpers import make_folder

from finetune_strategies.checkpointing.weights import read_state_dict
from finetune_strategies.cli.app import main
from finetune_strategies.image import ImageClassifier

pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")

VIT = {"img_size": 32, "depth": 2}


@pytest.fixture(autouse=True)
def _restore_seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI seeds and exports PL_GLOBAL_SEED; take it back out after the test."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")


def fit_args(tmp_path: Path, *extra: str) -> list[str]:
    make_folder(tmp_path / "train", per_class=4)
    return [
        "fit",
        "--model.backbone=vit_small_patch16_224",
        "--model.pretrained=false",
        "--model.image_size=32",
        '--model.backbone_kwargs={"img_size": 32, "depth": 2}',
        f"--data.train_folder={tmp_path / 'train'}",
        "--data.batch_size=4",
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def test_fit_lora_then_export_a_plain_timm_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "vit_lora.safetensors"
    lora = ["--strategy", "lora", "--strategy.r", "8", "--strategy.target_modules=re:.*(qkv|fc1|fc2)$"]
    assert main(fit_args(tmp_path, *lora, f"--export={export}")) == 0
    assert f"Backbone written to {export}" in capsys.readouterr().out
    weights = read_state_dict(export)
    plain = timm.create_model("vit_small_patch16_224", num_classes=0, **VIT)
    assert weights.keys() == plain.state_dict().keys()  # merged: no adapter or base_layer keys
    loaded = timm.create_model(
        "vit_small_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(export)}, num_classes=0, **VIT
    )
    assert all(torch.equal(weights[k], v) for k, v in loaded.state_dict().items())
    again = ImageClassifier(
        num_classes=2, backbone="vit_small_patch16_224", pretrained=str(export), backbone_kwargs=VIT
    )
    assert all(torch.equal(weights[k], v) for k, v in again.backbone.state_dict().items())


def test_a_bad_export_name_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(tmp_path, "--strategy", "lora", f"--export={tmp_path / 'vit.txt'}")) == 2  # a usage error
    error = capsys.readouterr().err
    assert "--export" in error
    assert ".safetensors" in error
    assert "Epoch" not in error
