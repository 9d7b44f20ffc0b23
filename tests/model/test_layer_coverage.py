"""Every parameter in exactly one layer, with short readable names, on real timm / torchvision models."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, get_args

import lightning.pytorch as pl
import pytest
import timm
import torch
import torchvision
from conftest import Recorder, make_trainer
from torch import nn

from finetune_strategies import LayerUnit, list_layers
from finetune_strategies.model.layers import Layer, name_parameters

UNITS: tuple[LayerUnit, ...] = get_args(LayerUnit)
PART = r"[\w.\-]+"
NAME = re.compile(rf"{PART}( \+ {PART}){{0,2}}|{PART} \+ \.\.\. \+ {PART} \(\d+ parts\)")


def small_vit() -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=4
    )


def small_swin() -> nn.Module:
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        img_size=64,
        window_size=2,
        depths=(1, 1, 1, 1),
        embed_dim=24,
        num_heads=(1, 1, 1, 1),
    )


def tv_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )


MODELS: dict[str, Callable[[], nn.Module]] = {
    "timm_resnet18": lambda: timm.create_model("resnet18", pretrained=False, num_classes=0),
    "convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=0),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=0),
    "timm_vit": small_vit,
    "timm_swin": small_swin,
    "tv_resnet18": torchvision.models.resnet18,
    "tv_vit": tv_vit,
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[request.param]()


def layer_params(layers: list[Layer]) -> list[list[nn.Parameter]]:
    """Each layer's parameters: the direct parameters of its modules, counted in the first layer that has them."""
    seen: set[int] = set()
    result = []
    for layer in layers:
        params = []
        for param in (p for m in layer.modules for p in m.parameters(recurse=False)):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
        result.append(params)
    return result


def check_partition(root: nn.Module, layers: list[Layer], unit: str) -> None:
    owners = [id(p) for params in layer_params(layers) for p in params]
    assert sorted(owners) == sorted(id(p) for p in root.parameters())  # every parameter exactly once
    modules = [id(m) for layer in layers for m in layer.modules]
    assert len(modules) == len(set(modules))  # no module twice
    order = {id(m): i for i, m in enumerate(root.modules())}
    for layer in layers:
        assert [order[id(m)] for m in layer.modules] == sorted(order[id(m)] for m in layer.modules)
    names = [layer.name for layer in layers]
    assert len(names) == len(set(names))
    for name in names:
        assert NAME.fullmatch(name), name
        assert len(name) <= 80, name
    if unit != "flash_leaves":  # flash counts parameter-less leaves
        assert all(layer_params(layers))


@pytest.mark.parametrize("unit", UNITS)
def test_every_parameter_in_exactly_one_layer(model: nn.Module, unit: LayerUnit) -> None:
    check_partition(model, list_layers([("backbone", model)], unit), unit)


def names_of(root: nn.Module, unit: LayerUnit = "blocks") -> list[str]:
    return [layer.name for layer in list_layers([("backbone", root)], unit)]


def test_timm_vit_stem_holds_cls_token_and_pos_embed_only_there() -> None:
    vit = small_vit()
    layers = list_layers([("backbone", vit)], "blocks")
    assert [x.name for x in layers] == [
        "backbone.stem",
        "backbone.blocks.0",
        "backbone.blocks.1",
        "backbone.blocks.2",
        "backbone.blocks.3 + backbone.norm",
    ]
    stem, *rest = layer_params(layers)
    assert {id(p) for p in stem} == {
        id(vit.cls_token),
        id(vit.pos_embed),
        *(id(p) for p in vit.patch_embed.parameters()),
    }
    assert layers[0].modules == (vit, vit.patch_embed.proj)
    later = {id(p) for params in rest for p in params}
    assert id(vit.cls_token) not in later
    assert id(vit.pos_embed) not in later


def test_timm_anchor_names() -> None:
    convnext = names_of(MODELS["convnext_atto"]())
    assert convnext[0] == "backbone.stem"
    assert "backbone.stages.1.downsample + backbone.stages.1.blocks.0" in convnext
    assert len(convnext) == 14
    effnet = names_of(MODELS["efficientnet_b0"]())
    assert (len(effnet), effnet[0], effnet[-1]) == (
        17,
        "backbone.stem",
        "backbone.blocks.6 + backbone.conv_head + backbone.bn2",
    )
    swin = names_of(small_swin())
    assert swin == [
        "backbone.patch_embed",
        "backbone.layers.0",
        "backbone.layers.1",
        "backbone.layers.2",
        "backbone.layers.3 + backbone.norm",
    ]
    resnet = names_of(MODELS["timm_resnet18"]())
    assert resnet[:2] == ["backbone.stem", "backbone.layer1.0"]
    assert names_of(small_vit(), "param_modules")[:2] == ["backbone", "backbone.patch_embed.proj"]


def test_torchvision_resnet18_structural_blocks() -> None:
    resnet = torchvision.models.resnet18()
    layers = list_layers([("backbone", resnet)], "blocks")
    assert [x.name for x in layers] == [
        "backbone.stem",
        *[f"backbone.layer{i}.{j}" for i in range(1, 5) for j in range(2)][:-1],
        "backbone.layer4.1 + backbone.fc",
    ]
    assert layers[0].modules == (resnet.conv1, resnet.bn1)


def test_torchvision_vit_stem_holds_class_token_and_pos_embedding() -> None:
    vit = tv_vit()
    layers = list_layers([("backbone", vit)], "blocks")
    assert [x.name for x in layers] == [
        "backbone.stem",
        "backbone.encoder.layers.encoder_layer_0",
        "backbone.encoder.layers.encoder_layer_1 + backbone.encoder.ln + backbone.heads",
    ]
    assert {id(p) for p in layer_params(layers)[0]} == {
        id(vit.class_token),
        id(vit.encoder.pos_embedding),
        *(id(p) for p in vit.conv_proj.parameters()),
    }
    assert layers[0].modules == (vit, vit.conv_proj, vit.encoder)


def test_torchvision_convnext_and_efficientnet_structural_blocks() -> None:
    with torch.device("meta"):  # structure only: no weights to initialise
        convnext = torchvision.models.convnext_tiny()
        effnet = torchvision.models.efficientnet_b0()
    names = names_of(convnext)
    assert len(names) == 19
    assert names[0] == "backbone.features.0"
    assert "backbone.features.2 + backbone.features.3.0" in names  # a downsample joins the next block
    assert names[-1] == "backbone.features.7.2 + backbone.classifier"
    names = names_of(effnet)
    assert len(names) == 17
    assert names[:3] == ["backbone.features.0", "backbone.features.1", "backbone.features.2.0"]  # 1-block stage
    assert names[-1] == "backbone.features.7 + backbone.features.8 + backbone.classifier"
    for root in (convnext, effnet):
        for unit in UNITS:
            check_partition(root, list_layers([("backbone", root)], unit), unit)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class Tower(nn.Module):
    """An embedding, a loose parameter, a list of blocks, a final norm and a parameter-less BatchNorm."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Block(8) for _ in range(depth))
        self.stats = nn.BatchNorm1d(8, affine=False)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) * self.scale
        for block in self.blocks:
            x = block(x)
        return self.norm(self.stats(x))


@pytest.mark.parametrize("unit", UNITS)
def test_structural_blocks_on_a_custom_module(unit: LayerUnit) -> None:
    tower = Tower()
    layers = list_layers([("net", tower)], unit)
    check_partition(tower, layers, unit)
    holder = next(layer for layer in layers if tower.stats in layer.modules)  # thawed with its neighbours
    if unit == "blocks":
        assert [x.name for x in layers] == ["net.stem", "net.blocks.0", "net.blocks.1", "net.blocks.2 + net.norm"]
        assert layers[0].modules == (tower, tower.embed)
        assert holder is layers[-1]
    if unit == "param_modules":
        assert [x.name for x in layers][:2] == ["net", "net.embed"]
        assert holder.name == "net.blocks.2.fc2"  # the closest preceding module


def test_structural_blocks_without_block_container_keep_loose_parameters_first() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))
            self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    assert names_of(Scaled()) == ["backbone.gain", "backbone.mlp.0", "backbone.mlp.2"]


def test_parameterless_batchnorm_joins_the_layer_that_contains_it() -> None:
    class ConvBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3, affine=False)
            self.conv2 = nn.Conv2d(3, 3, 1)
            self.conv3 = nn.Conv2d(3, 3, 1)

    net = nn.Sequential(nn.Conv2d(3, 3, 1), ConvBlock(), ConvBlock())
    for unit in UNITS:
        layers = list_layers([("net", net)], unit)
        check_partition(net, layers, unit)
        holder = next(layer for layer in layers if net[2].bn in layer.modules)
        expected = {"blocks": "net.2", "param_modules": "net.2.conv1", "flash_leaves": "net.2.bn"}
        assert holder.name == expected[unit]


def test_several_roots_concatenate_and_never_repeat() -> None:
    vit = small_vit()
    roots = [("backbone", vit), ("backbone.blocks", vit.blocks), ("extra", nn.Linear(2, 2))]
    for unit in UNITS:
        layers = list_layers(roots, unit)
        names = [x.name for x in layers]
        assert names[-1] == "extra"
        assert not any(n.startswith("backbone.blocks.blocks") for n in names)
        modules = [id(m) for x in layers for m in x.modules]
        assert len(modules) == len(set(modules))
    layers = list_layers(roots, "blocks")
    assert [x.name for x in layers][-2:] == ["backbone.blocks.3 + backbone.norm", "extra"]


def test_shared_parameter_counts_once() -> None:
    embed, out = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    out.weight = embed.weight  # tied, as an embedding and a language-model head
    net = nn.Sequential(embed, nn.Linear(4, 4), out)
    for unit in UNITS:
        check_partition(net, list_layers([("net", net)], unit), unit)
    for unit in ("param_modules", "blocks"):  # the head joins the layer of its first (shared) parameter
        layers = list_layers([("net", net)], unit)
        assert [(x.name, x.modules) for x in layers] == [("net.0", (embed, out)), ("net.1", (net[1],))]


# ---------------------------------------------------------------------------------- name_parameters
def test_name_parameters_of_subsets() -> None:
    vit = small_vit()
    block = list(vit.blocks[0].parameters())
    assert name_parameters(vit, vit.parameters(), "backbone") == "backbone"
    assert name_parameters(vit, vit.parameters()) == "VisionTransformer"
    assert name_parameters(vit, block, "backbone") == "backbone.blocks.0"
    assert name_parameters(vit, block) == "blocks.0"
    assert name_parameters(vit, [*block, vit.cls_token], "backbone") == "backbone.cls_token + backbone.blocks.0"
    assert name_parameters(vit, vit.blocks.parameters(), "b") == "b.blocks"
    assert name_parameters(vit, [vit.blocks[1].attn.qkv.weight]) == "blocks.1.attn.qkv.weight"
    three = [vit.cls_token, *vit.blocks[0].parameters(), *vit.norm.parameters()]
    assert name_parameters(vit, three, "backbone") == "backbone.cls_token + backbone.blocks.0 + backbone.norm"
    four = [*three, *vit.blocks[2].parameters()]
    assert name_parameters(vit, four, "backbone") == "backbone.cls_token + ... + backbone.norm (4 parts)"


def test_name_parameters_rejects_empty_and_foreign_sets() -> None:
    vit = small_vit()
    with pytest.raises(ValueError, match="empty"):
        name_parameters(vit, [], "backbone")
    with pytest.raises(ValueError, match="not in"):
        name_parameters(vit, [nn.Parameter(torch.ones(1))])


# ---------------------------------------------------------------------------------- a real run
class VitClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = small_vit()
        self.head = nn.Linear(self.backbone.num_features, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.head(self.backbone(batch[0])), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_unfreeze_milestones_with_blocks_trains_every_vit_parameter(recorder: Recorder) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    model = VitClassifier()
    make_trainer(3, callbacks=[recorder]).finetune(
        model,
        torch.utils.data.DataLoader(data, batch_size=2),
        strategy={
            "strategy": "unfreeze_milestones",
            "milestones": (1, 2),
            "num_layers": 1,
            "layer_unit": "blocks",
        },
    )
    backbone = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    assert "backbone.cls_token" in backbone
    assert "backbone.pos_embed" in backbone
    assert not any(recorder.requires_grad[0][n] for n in backbone)  # frozen before the first milestone
    assert recorder.requires_grad[1]["backbone.blocks.3.mlp.fc2.weight"]
    assert not recorder.requires_grad[1]["backbone.cls_token"]
    for name in backbone:  # after the second milestone: all of it, cls_token and pos_embed included
        assert recorder.requires_grad[2][name], name
        assert not torch.equal(recorder.weights[2][name], recorder.weights[1][name]), name
