"""find_anatomy: the backbone, head and layers of each family, the same through every wrapper."""

from __future__ import annotations

from collections.abc import Callable

import peft
import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn

from finetune_strategies import Anatomy, MissingModuleError, find_anatomy
from finetune_strategies.model.families import unwrap

transformers.logging.set_verbosity_error()


def bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
    )
    return transformers.AutoModelForSequenceClassification.from_config(config)


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, pad_token_id=0)
    return transformers.AutoModelForSequenceClassification.from_config(config)


def llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, pad_token_id=0
    )
    return transformers.AutoModelForSequenceClassification.from_config(config)


def timm_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, depth=2)


def torchvision_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )


def sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


# family, factory, backbone, head, layer names
FAMILIES: dict[str, tuple[str, Callable[[], nn.Module], str, tuple[str, ...], list[str]]] = {
    "timm resnet": (
        "timm",
        lambda: timm.create_model("resnet18", num_classes=3),
        "",
        ("fc",),
        ["stem", *(f"layer{i}.{j}" for i in range(1, 5) for j in range(2))],
    ),
    "timm vit": ("timm", timm_vit, "", ("head",), ["stem", "blocks.0", "blocks.1 + norm"]),
    "timm convnext": (
        "timm",
        lambda: timm.create_model("convnext_atto", num_classes=3),
        "",
        ("head.fc",),  # pretrained_cfg["classifier"]: head.norm is pretrained, it stays in the backbone
        ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample + stages.1.blocks.0"],
    ),
    "torchvision resnet": (
        "torchvision",
        lambda: torchvision.models.resnet18(num_classes=3),
        "",
        ("fc",),
        ["stem", *(f"layer{i}.{j}" for i in range(1, 5) for j in range(2))],
    ),
    "torchvision vit": (
        "torchvision",
        torchvision_vit,
        "",
        ("heads",),
        ["stem", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1 + encoder.ln"],
    ),
    "bert": (
        "transformers",
        bert,
        "bert",
        ("classifier",),
        ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2", "bert.pooler"],
    ),
    "gpt2": (
        "transformers",
        gpt2,
        "transformer",
        ("score",),
        ["transformer.stem", "transformer.h.0", "transformer.h.1", "transformer.ln_f"],
    ),
    "llama": (
        "transformers",
        llama,
        "model",
        ("score",),
        ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"],
    ),
    "sequential": ("sequential", sequential, "", ("4",), ["0", "2"]),
}


def _layer_params(model: nn.Module, anatomy: Anatomy) -> list[list[int]]:
    return [[id(p) for m in layer.modules for p in m.parameters(recurse=False)] for layer in anatomy.layers]


def _assert_partition(model: nn.Module, anatomy: Anatomy) -> None:
    """Every parameter of the model is in exactly one layer or in the head."""
    in_layers = [i for layer in _layer_params(model, anatomy) for i in layer]
    head = [id(p) for h in anatomy.head for p in model.get_submodule(h).parameters()]
    assert len(in_layers) == len(set(in_layers))
    assert set(in_layers).isdisjoint(head)
    assert set(in_layers) | set(head) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_has_its_backbone_head_and_layers(name: str) -> None:
    family, factory, backbone, head, layers = FAMILIES[name]
    model = factory()
    anatomy = find_anatomy(model)
    assert (anatomy.family, anatomy.model, anatomy.backbone, anatomy.head) == (family, "", backbone, head)
    names = [layer.name for layer in anatomy.layers]
    assert names[: len(layers)] == layers
    _assert_partition(model, anatomy)


def _strip(name: str, prefix: str) -> str:
    return name.replace(prefix + ".", "") if prefix else name


@pytest.mark.parametrize("name", FAMILIES)
def test_a_compiled_model_has_the_anatomy_of_the_plain_one(name: str) -> None:
    _, factory, _, _, _ = FAMILIES[name]
    plain = factory()
    compiled = torch.compile(plain, backend="eager")  # wraps; compiles nothing until it runs
    before, after = find_anatomy(plain), find_anatomy(compiled)  # type: ignore[arg-type]
    assert after.model == "_orig_mod"
    assert after.backbone == f"_orig_mod.{before.backbone}".rstrip(".")
    assert [_strip(h, "_orig_mod") for h in after.head] == list(before.head)
    assert [_strip(layer.name, "_orig_mod") for layer in after.layers] == [layer.name for layer in before.layers]
    assert _layer_params(plain, before) == _layer_params(plain, after)  # the same parameters, layer by layer


def test_a_data_parallel_model_has_the_anatomy_of_the_plain_one() -> None:
    plain = timm_vit()
    wrapped = nn.DataParallel(plain)
    anatomy = find_anatomy(wrapped)
    assert (anatomy.model, anatomy.head) == ("module", ("module.head",))
    assert _layer_params(plain, anatomy) == _layer_params(plain, find_anatomy(plain))


PEFT_TARGETS = {
    "timm resnet": ["conv2"],
    "timm vit": ["qkv"],
    "timm convnext": ["fc1"],
    "torchvision resnet": ["conv2"],
    "torchvision vit": ["mlp.0"],
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "sequential": ["2"],
}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_peft_model_has_the_anatomy_of_the_plain_one(name: str) -> None:
    family, factory, backbone, head, _ = FAMILIES[name]
    task = {"task_type": "SEQ_CLS"} if family == "transformers" else {}
    config = peft.LoraConfig(r=2, target_modules=PEFT_TARGETS[name], **task)
    expected = [layer.name for layer in find_anatomy(factory()).layers]
    wrapped = peft.get_peft_model(factory(), config)
    anatomy = find_anatomy(wrapped)
    prefix = "base_model.model"
    assert anatomy.model == prefix
    assert anatomy.backbone == f"{prefix}.{backbone}".rstrip(".")
    assert anatomy.head == tuple(f"{prefix}.{h}" for h in head)
    assert [_strip(layer.name, prefix) for layer in anatomy.layers] == expected
    _assert_partition(wrapped, anatomy)  # the adapters too: each in the layer of the block it adapts
    names = {id(m): n for n, m in wrapped.named_modules()}
    assert any("lora_A" in names[id(m)] for layer in anatomy.layers for m in layer.modules)


class Holder(nn.Module):
    """A LightningModule-like module holding a model at some depth, with parameter-less extras."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = model
        self.loss = nn.CrossEntropyLoss()


def test_the_one_model_inside_a_module_is_found_at_any_depth() -> None:
    holder = Holder(torch.compile(timm.create_model("resnet18", num_classes=3), backend="eager"))
    anatomy = find_anatomy(holder)
    assert anatomy.model == "model.encoder._orig_mod"
    assert anatomy.head == ("model.encoder._orig_mod.fc",)
    assert anatomy.layers[-1].name == "model.encoder._orig_mod.layer4.1"
    _assert_partition(holder, anatomy)


def test_a_module_holding_one_sequential_uses_it() -> None:
    holder = nn.Module()
    holder.net = sequential()
    anatomy = find_anatomy(holder)
    assert (anatomy.family, anatomy.backbone, anatomy.head) == ("sequential", "net", ("net.4",))


def test_several_models_or_none_are_refused_naming_what_was_found() -> None:
    holder = nn.Module()
    holder.image = timm.create_model("resnet18", num_classes=3)
    holder.text = bert()
    with pytest.raises(MissingModuleError, match=r"2 models .*`image` \(timm ResNet\), `text` \(transformers Bert"):
        find_anatomy(holder)
    plain = nn.Module()
    plain.encoder, plain.decoder = sequential(), sequential()
    with pytest.raises(MissingModuleError, match=r"encoder \(Sequential\), decoder \(Sequential\).*modules_to_freeze"):
        find_anatomy(plain)


def test_a_headless_timm_model_is_all_backbone() -> None:
    model = timm.create_model("resnet18", num_classes=0)
    anatomy = find_anatomy(model)
    assert anatomy.head == ()
    _assert_partition(model, anatomy)
    assert "no head with parameters" in anatomy.describe()


def test_unwrap_names_the_path_through_every_wrapper() -> None:
    inner = sequential()
    assert unwrap(nn.DataParallel(torch.compile(inner, backend="eager"))) == ("module._orig_mod", inner)  # type: ignore[arg-type]
    assert unwrap(inner) == ("", inner)
