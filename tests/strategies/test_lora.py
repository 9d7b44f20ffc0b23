"""``lora``: adapters injected with peft, trained with the head, then optionally everything; real Trainer runs."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
import pytest
import timm
import torch
import torchvision
from conftest import Recorder, TinyViT, image_loader, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import (
    AdapterError,
    Lora,
    MissingDependencyError,
    StrategySpecError,
    StrategySpecTypeError,
    merge_adapters,
    resolve_strategy,
)
from finetune_strategies.model.adapters import tuner_modules
from finetune_strategies.strategies.plan import describe_schedule

peft = pytest.importorskip("peft", reason="peft is not installed: pip install 'finetune-strategies[peft]'")

VIT_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def adapted(model: nn.Module) -> list[str]:
    """Names of the layers peft adapted."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def is_adapter(key: str) -> bool:
    return ".lora_" in key


def fit(model: pl.LightningModule, spec: Any, epochs: int = 2, **kwargs: Any) -> Recorder:
    recorder = Recorder()
    make_trainer(epochs, callbacks=[recorder], **kwargs).finetune(model, image_loader(), strategy=spec)
    return recorder


class TinyConvNet(pl.LightningModule):
    """A ConvNet backbone: an ungrouped conv, BatchNorm, a depthwise conv, pooling; a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.Conv2d(8, 8, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


# ---------------------------------------------------------------------------------- what trains
def test_adapters_and_head_train_and_the_base_stays_bitwise_unchanged() -> None:
    model = TinyViT()
    recorder = fit(model, ("lora", {"r": 4, "alpha": 8}))
    assert sorted(adapted(model)) == sorted(f"backbone.blocks.{i}.{n}" for i in range(4) for n in VIT_LINEARS)
    initial, final = recorder.initial, model.state_dict()
    base = [k for k in final if k.startswith("backbone.") and not is_adapter(k)]
    assert any(".base_layer.weight" in k for k in base)
    for key in base:
        assert torch.equal(initial[key], final[key]), key
    for key in [k for k in final if ".lora_B." in k or k.startswith("head.")]:
        assert not torch.equal(initial[key], final[key]), key
    for epoch in recorder.requires_grad:
        assert all(epoch[k] == (is_adapter(k) or k.startswith("head.")) for k in epoch)
    # the adapters are a named group at group 0's lr; group 0 keeps the head
    params = dict(model.named_parameters())
    lora_ids = {id(p) for k, p in params.items() if is_adapter(k)}
    assert recorder.group_names[0] == [None, "lora"]
    assert recorder.group_lrs[0] == [0.1, 0.1]
    assert set(recorder.groups[0][1]) == lora_ids
    assert set(recorder.groups[0][0]) == {id(params["head.weight"]), id(params["head.bias"])}


def test_lora_then_everything_unfreezes_the_base_at_unfreeze_epoch() -> None:
    model = TinyViT()
    recorder = fit(model, {"strategy": "lora", "r": 4, "unfreeze_epoch": 1}, epochs=3)
    key = "backbone.blocks.0.attn.qkv.base_layer.weight"
    first, second, third = recorder.weights
    assert torch.equal(recorder.initial[key], first[key])
    assert not torch.equal(first[key], second[key])
    assert not torch.equal(second[key], third[key])
    assert not recorder.requires_grad[0][key]
    assert recorder.requires_grad[1][key]
    assert recorder.group_names[1] == [None, "lora", "backbone"]
    assert recorder.group_lrs[1] == pytest.approx([0.1, 0.1, 0.01])
    assert all(recorder.requires_grad[1].values())  # adapters keep training too


class ScoredViT(TinyViT):
    """Logs ``val_score`` from a fixed sequence, one value per epoch, so the plateau's epoch is known."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_score", torch.tensor(self.scores[self.current_epoch]))


def test_lora_then_everything_when_the_metric_plateaus() -> None:
    model = ScoredViT([1.0, 0.9, 0.95, 0.96, 0.5])  # best at epoch 1; patience 2 runs out at epoch 3
    recorder = Recorder()
    trainer = make_trainer(5, callbacks=[recorder])
    spec = {"strategy": "lora", "r": 2, "monitor": "val_score", "patience": 2}
    trainer.finetune(model, image_loader(), val_dataloaders=image_loader(), strategy=spec)
    key = "backbone.blocks.0.attn.qkv.base_layer.weight"
    assert [flags[key] for flags in recorder.requires_grad] == [False] * 4 + [True]
    assert recorder.group_names[3] == [None, "lora"]
    assert recorder.group_names[4] == [None, "lora", "backbone"]
    assert torch.equal(recorder.initial[key], recorder.weights[3][key])
    strategy = next(c for c in trainer.callbacks if isinstance(c, Lora))
    (transition,) = [t for t in strategy.transitions if t.phase == 1]
    assert (transition.epoch, transition.best_epoch) == (4, 1)
    assert "val_score plateaued" in transition.reason


def test_adapters_follow_the_base_layers_dtype() -> None:
    model = TinyViT().double()
    images, labels = image_loader().dataset.tensors
    loader = DataLoader(TensorDataset(images.double(), labels), batch_size=4)
    make_trainer(1).finetune(model, loader, strategy=("lora", 2))
    dtypes = {p.dtype for k, p in model.named_parameters() if is_adapter(k)}
    assert dtypes == {torch.float64}


# ---------------------------------------------------------------------------------- which layers
@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("re:.*(qkv|fc1|fc2)$", ("attn.qkv", "mlp.fc1", "mlp.fc2")),
        ("backbone.blocks.*.attn.qkv", ("attn.qkv",)),
        (["qkv", "proj"], ("attn.qkv", "attn.proj")),  # peft's bare names; patch_embed.proj is no linear
    ],
)
def test_target_modules_in_the_selector_language_or_peft_names(targets: Any, expected: tuple[str, ...]) -> None:
    model = TinyViT()
    make_trainer(1).finetune(model, image_loader(), strategy={"strategy": "lora", "r": 2, "target_modules": targets})
    want = {f"backbone.blocks.{i}.{n}" for i in range(4) for n in expected}
    if targets == ["qkv", "proj"]:
        want.add("backbone.patch_embed.proj")  # a Conv2d named proj: an adaptable layer too
    assert set(adapted(model)) == want


def test_a_block_selector_adapts_the_layers_inside_it() -> None:
    model = TinyViT()
    make_trainer(1).finetune(
        model, image_loader(), strategy={"strategy": "lora", "target_modules": "backbone.blocks[-1]"}
    )
    assert sorted(adapted(model)) == sorted(f"backbone.blocks.3.{n}" for n in VIT_LINEARS)


def test_convnet_default_targets_are_its_ungrouped_convolutions() -> None:
    model = TinyConvNet()
    recorder = fit(model, ("lora", 2), epochs=1)
    assert adapted(model) == ["backbone.0", "backbone.4"]  # the depthwise conv cannot be merged: left out
    final = model.state_dict()
    assert torch.equal(recorder.initial["backbone.3.weight"], final["backbone.3.weight"])
    assert not torch.equal(
        recorder.initial["backbone.4.lora_B.default.weight"], final["backbone.4.lora_B.default.weight"]
    )


class TorchvisionViT(TinyConvNet):
    """A torchvision ViT backbone: nn.MultiheadAttention, whose forward uses its projections' weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
        )
        self.backbone.heads = nn.Identity()
        self.head = nn.Linear(16, 2)


def test_torchvision_vit_adapts_its_mlp_and_leaves_attention_alone() -> None:
    """nn.MultiheadAttention uses its projections' weights directly: peft's adapter for it merges and
    unmerges in every forward, which moves the frozen weights by rounding. So it is never adapted."""
    model = TorchvisionViT()
    recorder = fit(model, ("lora", 2), epochs=2)
    layers = [f"backbone.encoder.layers.encoder_layer_{i}" for i in range(2)]
    assert adapted(model) == [f"{n}.mlp.{m}" for n in layers for m in (0, 3)]
    for key in ("self_attention.in_proj_weight", "self_attention.out_proj.weight", "mlp.0.base_layer.weight"):
        key = f"{layers[0]}.{key}"
        assert torch.equal(recorder.initial[key], model.state_dict()[key]), key
    attention = {"strategy": "lora", "target_modules": "re:.*self_attention(\\.out_proj)?"}
    with pytest.raises(AdapterError, match=r"none inside an nn\.MultiheadAttention"):
        make_trainer(1).finetune(TorchvisionViT(), image_loader(), strategy=attention)
    model.eval()
    images = next(iter(image_loader()))[0]
    with torch.no_grad():
        before = model(images)
        merge_adapters(model)
        assert torch.allclose(before, model(images), atol=1e-5)
    assert isinstance(model.backbone.encoder.layers[0].self_attention, nn.MultiheadAttention)


def test_dora_trains_its_magnitudes() -> None:
    model = TinyViT()
    recorder = fit(model, {"strategy": "lora", "r": 2, "use_dora": True, "target_modules": "qkv"}, epochs=1)
    magnitude = "backbone.blocks.0.attn.qkv.lora_magnitude_vector.default.weight"
    assert not torch.equal(recorder.initial[magnitude], model.state_dict()[magnitude])


def test_modules_to_save_train_whole_in_place() -> None:
    model = TinyViT()
    recorder = fit(model, {"strategy": "lora", "r": 2, "modules_to_save": "backbone.norm"}, epochs=1)
    assert not torch.equal(recorder.initial["backbone.norm.weight"], model.state_dict()["backbone.norm.weight"])
    norm = {id(p) for p in model.backbone.norm.parameters()}
    assert norm <= set(recorder.groups[0][1])  # in the lora group
    key = "backbone.blocks.0.attn.qkv.base_layer.weight"
    assert torch.equal(recorder.initial[key], model.state_dict()[key])


def test_other_peft_tuners_through_peft_config() -> None:
    model = TinyViT()
    config = peft.IA3Config(target_modules=["fc1", "fc2"], feedforward_modules=["fc2"])
    recorder = fit(model, {"strategy": "lora", "peft_config": config}, epochs=1)
    ia3 = [k for k in model.state_dict() if ".ia3_l." in k]
    assert len(ia3) == 8
    assert any(not torch.equal(recorder.initial[k], model.state_dict()[k]) for k in ia3)
    base = [k for k in model.state_dict() if k.startswith("backbone.") and ".ia3_l." not in k]
    assert all(torch.equal(recorder.initial[k], model.state_dict()[k]) for k in base)


def test_peft_config_as_a_dict_for_yaml_and_the_cli() -> None:
    callback = resolve_strategy({"strategy": "lora", "peft_config": {"peft_type": "LORA", "r": 2, "lora_alpha": 4}})
    assert isinstance(callback, Lora)
    assert isinstance(callback.peft_config, peft.LoraConfig)
    model = TinyViT()
    make_trainer(1).finetune(model, image_loader(), strategy=callback)
    assert len(adapted(model)) == 16


class ValidatedViT(TinyViT):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))


def test_validate_and_a_second_fit_reuse_the_adapters() -> None:
    model = ValidatedViT()
    trainer = make_trainer(1)
    trainer.finetune(model, image_loader(), strategy=("lora", 2))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.validate(model, image_loader())
    trainer.finetune(model, image_loader(), strategy=("lora", 2))
    assert model.state_dict().keys() == trained.keys()
    assert len(adapted(model)) == 16


def test_describe_schedule_plans_the_adapter_group_and_the_switch() -> None:
    model = TinyViT()
    plan = describe_schedule(model, {"strategy": "lora", "r": 2, "unfreeze_epoch": 1}, max_epochs=2)
    assert [g.name for g in plan.epochs[0].groups] == [None, "lora"]
    assert [g.name for g in plan.epochs[1].groups] == [None, "lora", "backbone"]
    assert plan.epochs[1].started == ["backbone"]
    assert plan.epochs[0].trainable_params < plan.epochs[1].trainable_params == plan.epochs[1].total_params
    assert tuner_modules(model) == []  # planned on a copy: the model itself carries no adapters


# ---------------------------------------------------------------------------------- merge
@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_folds_adapters_in_and_leaves_the_plain_architecture(use_dora: bool) -> None:
    model = TinyViT()
    make_trainer(2).finetune(model, image_loader(), strategy={"strategy": "lora", "r": 4, "use_dora": use_dora})
    model.eval()
    images = next(iter(image_loader()))[0]
    with torch.no_grad():
        before = model(images)
        assert merge_adapters(model) is model
        after = model(images)
    assert tuner_modules(model) == []
    assert not any(hasattr(m, "peft_config") for m in model.modules())
    plain = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=4
    )
    assert model.backbone.state_dict().keys() == plain.state_dict().keys()
    assert torch.allclose(before, after, atol=1e-5)


def test_merge_hands_peft_modules_to_save_copies_back() -> None:
    model = TinyViT()
    config = peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["norm"])
    make_trainer(1).finetune(model, image_loader(), strategy={"strategy": "lora", "peft_config": config})
    trained = model.backbone.norm.modules_to_save["default"].weight.detach().clone()
    merge_adapters(model)
    assert isinstance(model.backbone.norm, nn.LayerNorm)
    assert torch.equal(model.backbone.norm.weight, trained)


# ---------------------------------------------------------------------------------- bad input
def assert_nothing_trained(model: pl.LightningModule, before: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert all(torch.equal(before[k], state[k]) for k in before if k in state)


def test_targets_that_match_nothing_list_the_candidate_layers() -> None:
    model = TinyViT()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        AdapterError, match=r"'q_proj' is neither.*Did you mean 'proj'.*named proj, qkv, fc1, fc2"
    ) as info:
        make_trainer(1).finetune(model, image_loader(), strategy={"strategy": "lora", "target_modules": ["q_proj"]})
    assert "backbone.blocks.0.attn.qkv" in str(info.value)
    assert_nothing_trained(model, before)
    assert tuner_modules(model) == []


def test_targets_outside_the_backbone_or_without_a_layer_are_refused() -> None:
    with pytest.raises(AdapterError, match="outside the frozen modules"):
        make_trainer(1).finetune(TinyViT(), image_loader(), strategy={"strategy": "lora", "target_modules": "head"})
    with pytest.raises(AdapterError, match="holds no layer LoRA can adapt"):
        make_trainer(1).finetune(
            TinyViT(), image_loader(), strategy={"strategy": "lora", "target_modules": "backbone.norm"}
        )


@pytest.mark.parametrize("r", [0, -1])
def test_rank_below_one_is_refused(r: int) -> None:
    with pytest.raises(StrategySpecError, match=r"`r` must be >= 1"):
        resolve_strategy(("lora", r))


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ({"r": 2.5}, StrategySpecTypeError, "`r` must be an int"),
        ({"dropout": 1.0}, StrategySpecError, r"`dropout` must be in \[0, 1\)"),
        ({"target_modules": []}, StrategySpecTypeError, "non-empty list"),
        ({"peft_config": {"r": 2}}, StrategySpecTypeError, "peft_type"),
        ({"r": 4, "peft_config": {"peft_type": "LORA"}}, StrategySpecTypeError, r"set them in the peft config"),
        ({"rank": 4}, StrategySpecTypeError, "does not take"),
    ],
)
def test_bad_settings_fail_when_the_strategy_is_built(spec: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_strategy({"strategy": "lora", **spec})


def test_a_backbone_without_a_layer_lora_supports_is_refused() -> None:
    model = TinyConvNet()
    model.backbone = nn.Sequential(
        nn.Conv2d(3, 3, 3, groups=3), nn.LayerNorm([30, 30]), nn.Flatten(), nn.AdaptiveAvgPool1d(8)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match="has no layer LoRA can adapt"):
        make_trainer(1).finetune(model, image_loader(), strategy="lora")
    assert_nothing_trained(model, before)


def test_a_model_that_already_carries_adapters_is_refused() -> None:
    model = TinyViT()
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["qkv"]), model.backbone)
    with pytest.raises(AdapterError, match="already carries peft adapters"):
        make_trainer(1).finetune(model, image_loader(), strategy="lora")
    other = TinyViT()
    make_trainer(1).finetune(other, image_loader(), strategy=("lora", 2))
    with pytest.raises(AdapterError, match="already carries adapters from other lora settings"):
        make_trainer(1).finetune(other, image_loader(), strategy=("lora", 4))


def test_modules_to_save_outside_the_backbone_or_also_adapted_is_refused() -> None:
    with pytest.raises(AdapterError, match="outside the frozen modules"):
        make_trainer(1).finetune(TinyViT(), image_loader(), strategy={"strategy": "lora", "modules_to_save": "head"})
    spec = {"strategy": "lora", "target_modules": "qkv", "modules_to_save": "backbone.blocks.0"}
    with pytest.raises(AdapterError, match="both adapted and trained whole"):
        make_trainer(1).finetune(TinyViT(), image_loader(), strategy=spec)


def test_without_peft_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "finetune-strategies\[peft\]"'):
        resolve_strategy("lora")
    with pytest.raises(ImportError):  # an ImportError for callers who do not know this library
        resolve_strategy("lora")
