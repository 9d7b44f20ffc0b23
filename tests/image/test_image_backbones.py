"""Backbones from timm names, torchvision names and modules; local weight files and their errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from image_helpers import BACKBONE
from torch import nn

from finetune_strategies.errors import (
    BackboneError,
    MissingPathError,
    PretrainedWeightsError,
    UnknownBackboneError,
    WeightMatchError,
)
from finetune_strategies.image import ImageClassifier, build_backbone
from finetune_strategies.image.backbones import find_head
from finetune_strategies.image.weight_files import read_weights, save_weights


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_timm_name_gives_pooled_features_without_classifier():
    built = build_backbone(BACKBONE)
    assert built.source == "timm"
    assert isinstance(built.module.get_classifier(), nn.Identity)
    assert built.module(torch.zeros(2, 3, 32, 32)).shape == (2, built.num_features)
    assert built.data_config["input_size"] == (3, 160, 160)


def test_unknown_timm_name_lists_close_names():
    with pytest.raises(UnknownBackboneError, match=r"'resnt18'.*Did you mean: .*resnet18"):
        build_backbone("resnt18")


def test_unknown_torchvision_name_lists_close_names():
    with pytest.raises(UnknownBackboneError, match=r"'resnet181'.*torchvision:resnet18"):
        build_backbone("torchvision:resnet181")


@pytest.mark.parametrize("bad", ["", 3, None])
def test_backbone_of_wrong_type(bad):
    with pytest.raises(BackboneError, match="timm model name"):
        build_backbone(bad)


def _tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8, num_classes=3
    )


def _tiny_swin() -> nn.Module:
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=3
    )


def _tiny_vgg_like() -> nn.Module:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.classifier = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    model.forward = lambda x: model.classifier(model.features(x))  # type: ignore[method-assign]
    return model


@pytest.mark.parametrize(
    ("factory", "head", "features"),
    [
        (lambda: torchvision.models.resnet18(num_classes=3), "fc", 512),
        (_tiny_vgg_like, "classifier.2", 6),
        (_tiny_vit, "heads.head", 8),
        (_tiny_swin, "head", 16),
    ],
)
def test_torchvision_head_is_found_and_replaced(factory, head, features):
    module = factory()
    found = find_head(module)
    assert found is not None
    assert found[0] == head
    built = build_backbone(module)
    assert built.num_features == features
    assert isinstance(built.module.get_submodule(head), nn.Identity)
    size = 16 if factory is _tiny_vit else 32
    assert built.module(torch.zeros(2, 3, size, size)).shape == (2, features)


def test_vgg_like_keeps_the_layers_before_the_last_linear():
    built = build_backbone(_tiny_vgg_like())
    assert isinstance(built.module.get_submodule("classifier.0"), nn.Linear)


def test_module_without_head_needs_num_features():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(BackboneError, match=r"fc, classifier, heads, head.*num_features"):
        build_backbone(module)
    assert build_backbone(module, num_features=4).num_features == 4


def test_torchvision_name_builds_without_weights():
    built = build_backbone("torchvision:resnet18")
    assert built.source == "torchvision"
    assert built.num_features == 512
    assert isinstance(built.module.fc, nn.Identity)


def test_timm_module_instance_loses_classifier():
    module = timm.create_model(BACKBONE, num_classes=7)
    built = build_backbone(module)
    assert built.source == "timm"
    assert isinstance(module.get_classifier(), nn.Identity)


# ------------------------------------------------------------------------------------ weight files
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_file_loads_exactly(tmp_path, suffix):
    source = timm.create_model(BACKBONE, num_classes=0)
    path = save_weights(source, tmp_path / f"w{suffix}")
    loaded = build_backbone(BACKBONE, pretrained=path).module
    assert _same_weights(source, loaded)
    assert loaded.pretrained_cfg["file"] == str(path)  # through timm's pretrained_cfg_overlay


def test_file_with_a_different_head_drops_it_as_timm_does(tmp_path):
    source = timm.create_model(BACKBONE, num_classes=1000)
    path = tmp_path / "with_head.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # wrapped, as training scripts save it
    model = ImageClassifier(num_classes=3, backbone=BACKBONE, pretrained=str(path))
    reference = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in reference.items())
    assert model.head[-1].out_features == 3


def test_file_of_another_architecture_names_keys_and_shapes(tmp_path):
    path = save_weights(timm.create_model("test_efficientnet", num_classes=0), tmp_path / "eff.safetensors")
    with pytest.raises(WeightMatchError) as info:
        build_backbone(BACKBONE, pretrained=path)
    message = str(info.value)
    assert "eff.safetensors" in message
    assert "the model needs but the file lacks: conv1.0.weight [16, 3, 3, 3]" in message
    assert "in the file that the model does not have" in message


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    state = timm.create_model(BACKBONE, num_classes=0).state_dict()
    state["conv1.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightMatchError, match=r"conv1\.0\.weight \[8, 3, 3, 3\] vs \[16, 3, 3, 3\]"):
        build_backbone(BACKBONE, pretrained=path)


def test_missing_keys_are_an_error_even_though_timm_loads_non_strictly(tmp_path):
    state = timm.create_model(BACKBONE, num_classes=0).state_dict()
    del state["layer4.0.conv1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightMatchError, match=r"1 key\(s\) the model needs.*layer4\.0\.conv1\.weight"):
        build_backbone(BACKBONE, pretrained=path)


def test_classifier_checkpoint_is_recognised(tmp_path):
    model = ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False)
    path = tmp_path / "whole_model.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(WeightMatchError, match="looks like an ImageClassifier checkpoint"):
        build_backbone(BACKBONE, pretrained=path)


def test_torchvision_file_round_trip_and_mismatch(tmp_path):
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "tv.pth"
    torch.save(source.state_dict(), path)  # with its 10-class fc, which is dropped
    loaded = build_backbone("torchvision:resnet18", pretrained=path).module
    assert torch.equal(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    with pytest.raises(WeightMatchError, match="torchvision backbone 'torchvision:resnet34'"):
        build_backbone("torchvision:resnet34", pretrained=path)


@pytest.mark.parametrize(
    ("pretrained", "error", "match"),
    [
        ("weights.txt", PretrainedWeightsError, r"\.safetensors, \.pth"),
        ("missing.safetensors", MissingPathError, "does not exist"),
        (3, PretrainedWeightsError, "must be True, False or a path"),
    ],
)
def test_bad_pretrained_values(tmp_path, pretrained, error, match):
    if isinstance(pretrained, str):
        pretrained = str(tmp_path / pretrained)
        if pretrained.endswith(".txt"):
            (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(error, match=match):
        build_backbone(BACKBONE, pretrained=pretrained)


def test_unreadable_weight_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(PretrainedWeightsError, match="Cannot read weight file"):
        read_weights(path)


def test_pretrained_true_offline_says_what_to_do(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedWeightsError, match="pass pretrained=False"):
        build_backbone(BACKBONE, pretrained=True)


def test_pretrained_true_for_a_module_is_rejected():
    with pytest.raises(PretrainedWeightsError, match="needs a backbone name"):
        build_backbone(nn.Sequential(nn.Flatten()), pretrained=True, num_features=3)
