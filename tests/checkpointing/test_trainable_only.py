"""Checkpoints that keep only what trained: contents, size, fingerprint, resume, load_from_checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import timm
import torch
from conftest import QUIET_TRAINER, TinyClassifier, TinyViT, image_loader, loader, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file

from finetune_strategies import AdapterError, FrozenWeightsError, StrategySpecTypeError, resolve_strategy
from finetune_strategies.checkpointing.trainable_only import RECORD_KEY, fingerprint, is_trainable_only
from finetune_strategies.image import ImageClassifier

pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")

VIT = {"img_size": 32, "patch_size": 8, "depth": 2}
LORA_THEN_ALL = {"strategy": "lora", "r": 4, "unfreeze_epoch": 2}


def checkpoints(tmp_path: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")


def fit(
    model: pl.LightningModule, data: Any, spec: Any, epochs: int, tmp_path: Path | None = None, **kwargs: Any
) -> None:
    callbacks = [checkpoints(tmp_path)] if tmp_path is not None else []
    trainer = make_trainer(epochs, callbacks=callbacks, enable_checkpointing=bool(callbacks))
    trainer.finetune(model, data, strategy=spec, **kwargs)


def vit_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT).state_dict(), str(path))
    return path


def classifier(weights: Path | bool) -> ImageClassifier:
    pretrained = str(weights) if isinstance(weights, Path) else weights
    return ImageClassifier(num_classes=2, backbone="vit_tiny_patch16_224", pretrained=pretrained, backbone_kwargs=VIT)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------- contents
def test_a_lora_checkpoint_holds_the_adapters_head_and_a_fingerprint_of_the_rest(tmp_path: Path) -> None:
    model = TinyViT()
    fit(model, image_loader(), ("lora", 4), 1, tmp_path / "lora")
    saved = torch.load(tmp_path / "lora" / "epoch=0.ckpt", weights_only=True)
    params = dict(model.named_parameters())
    kept = set(saved["state_dict"])
    assert kept == {k for k, p in params.items() if p.requires_grad}  # TinyViT has no buffers
    assert all(".lora_" in k or k.startswith("head.") for k in kept)
    record = saved[RECORD_KEY]
    assert set(record["frozen"]) == {k for k, p in params.items() if not p.requires_grad}
    assert record["fingerprint"] == fingerprint((k, params[k]) for k in record["frozen"])
    assert record["source"] == "TinyViT"
    assert list(record["adapters"]) == ["backbone"]
    fit(TinyViT(), image_loader(), {"strategy": "lora", "r": 4, "save_trainable_only": False}, 1, tmp_path / "full")
    small, full = (tmp_path / name / "epoch=0.ckpt" for name in ("lora", "full"))
    assert small.stat().st_size < 0.15 * full.stat().st_size
    assert not is_trainable_only(torch.load(full, weights_only=True))


def test_after_the_unfreeze_everything_is_kept(tmp_path: Path) -> None:
    fit(TinyViT(), image_loader(), LORA_THEN_ALL, 3, tmp_path)
    frozen = [len(torch.load(tmp_path / f"epoch={e}.ckpt", weights_only=True)[RECORD_KEY]["frozen"]) for e in range(3)]
    assert frozen[0] == frozen[1] > 0
    assert frozen[2] == 0


@pytest.mark.parametrize(("spec", "epochs", "partial"), [("freeze", 2, [0, 1]), (("freeze_unfreeze", 1), 2, [0])])
def test_freeze_strategies_leave_the_backbone_out_while_it_is_frozen(
    tmp_path: Path, spec: Any, epochs: int, partial: list[int]
) -> None:
    model = TinyClassifier()
    fit(model, loader(), resolve_strategy(spec, save_trainable_only=True), epochs, tmp_path)
    for epoch in range(epochs):
        saved = torch.load(tmp_path / f"epoch={epoch}.ckpt", weights_only=True)
        frozen = saved.get(RECORD_KEY, {}).get("frozen", [])
        if epoch in partial:  # the linear layers; BatchNorm trains (train_bn) and buffers are always kept
            assert frozen == ["backbone.0.bias", "backbone.0.weight", "backbone.3.bias", "backbone.3.weight"]
            assert "backbone.2.running_mean" in saved["state_dict"]
        else:
            assert not frozen
            assert "backbone.0.weight" in saved["state_dict"]


def test_save_trainable_only_must_be_a_bool() -> None:
    with pytest.raises(StrategySpecTypeError, match="save_trainable_only"):
        resolve_strategy("freeze", save_trainable_only="yes")


# ---------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_resume_in_or_after_the_adapter_phase_is_bitwise_equal_to_one_run(tmp_path: Path, epoch: int) -> None:
    straight = TinyViT()
    fit(straight, image_loader(), LORA_THEN_ALL, 4, tmp_path)
    resumed = TinyViT()
    fit(resumed, image_loader(), LORA_THEN_ALL, 4, ckpt_path=tmp_path / f"epoch={epoch}.ckpt")
    expected = straight.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in resumed.state_dict().items())


def test_freeze_unfreeze_resumes_from_a_trainable_only_checkpoint_bitwise(tmp_path: Path) -> None:
    spec = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "save_trainable_only": True}
    straight = TinyClassifier()
    fit(straight, loader(), spec, 3, tmp_path)
    resumed = TinyClassifier()
    fit(resumed, loader(), spec, 3, ckpt_path=tmp_path / "epoch=0.ckpt")
    assert all(torch.equal(straight.state_dict()[k], v) for k, v in resumed.state_dict().items())


def test_plain_lightning_trainer_resumes_from_it_too(tmp_path: Path) -> None:
    fit(TinyViT(), image_loader(), LORA_THEN_ALL, 1, tmp_path)
    model = TinyViT()
    trainer = pl.Trainer(max_epochs=2, callbacks=[resolve_strategy(LORA_THEN_ALL)], **QUIET_TRAINER)
    trainer.fit(model, image_loader(), ckpt_path=tmp_path / "epoch=0.ckpt")
    assert trainer.global_step == 4


def test_resume_onto_other_frozen_weights_fails_before_training(tmp_path: Path) -> None:
    fit(TinyViT(), image_loader(), LORA_THEN_ALL, 1, tmp_path)
    other = TinyViT()
    with torch.no_grad():
        other.backbone.blocks[0].mlp.fc1.weight.add_(1e-3)
    before = [(p, p.detach().clone()) for p in other.parameters()]
    trainer = make_trainer(2)
    path = tmp_path / "epoch=0.ckpt"
    with pytest.raises(FrozenWeightsError) as info:
        trainer.finetune(other, image_loader(), strategy=LORA_THEN_ALL, ckpt_path=path)
    message = str(info.value)
    saved = torch.load(path, weights_only=True)[RECORD_KEY]["fingerprint"]
    assert str(path) in message
    assert saved in message
    assert "source: TinyViT" in message
    assert message.count("sha256:") == 2
    assert trainer.global_step == 0
    assert all(torch.equal(param, value) for param, value in before)  # the same parameters, under base_layer


# ---------------------------------------------------------------------------------- load_from_checkpoint
def test_load_from_checkpoint_rebuilds_the_frozen_weights_and_the_adapters(tmp_path: Path) -> None:
    weights = vit_weights(tmp_path / "vit.safetensors", seed=1)
    model = classifier(weights)
    fit(model, image_loader(), ("lora", 4), 1, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "epoch=0.ckpt"
    assert is_trainable_only(torch.load(path, weights_only=True))
    loaded = ImageClassifier.load_from_checkpoint(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in loaded.state_dict().items())
    images = image_loader().dataset.tensors[0]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_validate_with_ckpt_path_reads_it(tmp_path: Path) -> None:
    model = classifier(vit_weights(tmp_path / "vit.safetensors", seed=1))
    fit(model, image_loader(), ("lora", 4), 1, tmp_path / "ckpt")
    fresh = classifier(tmp_path / "vit.safetensors")
    results = make_trainer(1).validate(fresh, image_loader(), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert results
    assert "val_loss" in results[0]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fresh.state_dict().items())


def test_load_from_checkpoint_onto_other_pretrained_weights_names_both_fingerprints_and_sources(tmp_path: Path) -> None:
    weights = vit_weights(tmp_path / "vit.safetensors", seed=1)
    fit(classifier(weights), image_loader(), ("lora", 4), 1, tmp_path / "ckpt")
    vit_weights(weights, seed=2)  # the pretrained file changed since
    with pytest.raises(
        FrozenWeightsError, match=r"fingerprint sha256:\w+ \(source: ImageClassifier\(backbone="
    ) as info:
        ImageClassifier.load_from_checkpoint(tmp_path / "ckpt" / "epoch=0.ckpt")
    assert str(info.value).count("sha256:") == 2
    assert f"pretrained={str(weights)!r}" in str(info.value)


def test_weights_only_checkpoints_name_the_adapters_too(tmp_path: Path) -> None:
    model = classifier(vit_weights(tmp_path / "vit.safetensors", seed=1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_weights_only=True, filename="weights")
    make_trainer(1, callbacks=[checkpoint], enable_checkpointing=True).finetune(model, image_loader(), ("lora", 4))
    saved = torch.load(tmp_path / "ckpt" / "weights.ckpt", weights_only=True)
    assert not is_trainable_only(saved)  # Lightning runs no callback hook for weights-only files: all is there
    assert list(saved[RECORD_KEY]["adapters"]) == ["backbone"]
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "ckpt" / "weights.ckpt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in loaded.state_dict().items())


def test_resume_with_other_adapter_settings_is_refused(tmp_path: Path) -> None:
    fit(TinyViT(), image_loader(), LORA_THEN_ALL, 1, tmp_path)
    with pytest.raises(AdapterError, match="trained with other adapters"):
        fit(TinyViT(), image_loader(), {**LORA_THEN_ALL, "r": 8}, 2, ckpt_path=tmp_path / "epoch=0.ckpt")


def test_random_initial_weights_cannot_be_rebuilt(tmp_path: Path) -> None:
    fit(classifier(False), image_loader(), ("lora", 4), 1, tmp_path)
    with pytest.raises(FrozenWeightsError, match="pretrained=False"):
        ImageClassifier.load_from_checkpoint(tmp_path / "epoch=0.ckpt")
