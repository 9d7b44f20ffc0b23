"""Strategies on LightningModules that hold a plain timm, torchvision or transformers model and name nothing.

Real fits: which parameters change in which epoch, the param groups by identity with their lrs, and the
refusals at setup, before any step.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import timm
import torch
import torchvision
import transformers
from conftest import Recorder, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import (
    ConfigurationError,
    MissingModuleError,
    ScheduleError,
    describe_schedule,
)

transformers.logging.set_verbosity_error()

VOCAB, LENGTH = 64, 8


class Holder(pl.LightningModule):
    """Holds a model as ``self.net`` (at ``self.model.encoder`` with ``deep=True``); SGD over what trains."""

    def __init__(self, model: nn.Module, deep: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        if deep:
            self.model = nn.Module()
            self.model.encoder = model
        else:
            self.net = model
        self.deep = deep
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model.encoder if self.deep else self.net
        out = model(x)
        return out.logits if hasattr(out, "logits") else out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        if logits.ndim == 3:  # a causal language model: predict the next token
            return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        return nn.functional.cross_entropy(logits, y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def images(n: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 3, (n,), generator=generator))
    return DataLoader(data, batch_size=4)


def tokens(n: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    return DataLoader(TensorDataset(ids, torch.randint(0, 3, (n,), generator=generator)), batch_size=4)


def bert(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.AutoModelForSequenceClassification.from_config(config)


def timm_resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=3)


def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, depth=2)


def torchvision_resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3)


def compiled(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    return lambda: torch.compile(factory(), backend="eager")  # type: ignore[return-value]


# model, data, the head's parameter-name prefix
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], DataLoader], str]] = {
    "timm resnet": (timm_resnet, images, "net.fc."),
    "timm vit": (timm_vit, images, "net.head."),
    "torchvision resnet": (torchvision_resnet, images, "net.fc."),
    "transformers bert": (bert, tokens, "net.classifier."),
    "compiled timm resnet": (compiled(timm_resnet), images, "net._orig_mod.fc."),
    "compiled timm vit": (compiled(timm_vit), images, "net._orig_mod.head."),
}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names: list[str]) -> set[str]:
    return {n for n in names if not torch.equal(before[n], after[n])}


def batchnorm_affine(model: nn.Module) -> set[str]:
    return {
        f"{name}.{p}"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for p in ("weight", "bias")
    }


@pytest.mark.parametrize("name", MODELS)
def test_a_plain_model_finetunes_with_no_other_information(name: str) -> None:
    factory, data, head = MODELS[name]
    model, recorder = Holder(factory()), Recorder()
    make_trainer(2, callbacks=[recorder]).finetune(model, data(), strategy=("freeze_unfreeze", 1))
    names = [n for n, _ in model.named_parameters()]
    # epoch 0: the head, and BatchNorm's affine parameters (train_bn=True, the default), nothing else
    expected = {n for n in names if n.startswith(head)} | (batchnorm_affine(model) & set(names))
    assert changed(recorder.initial, recorder.weights[0], names) == expected
    assert len(expected) < len(names)
    assert changed(recorder.weights[0], recorder.weights[1], names) == set(names)  # epoch 1: everything


def test_with_train_bn_false_only_the_head_changes_in_the_frozen_epoch() -> None:
    model, recorder = Holder(timm_resnet()), Recorder()
    make_trainer(1, callbacks=[recorder]).finetune(model, images(), strategy=("freeze_unfreeze", 1), train_bn=False)
    names = [n for n, _ in model.named_parameters()]
    assert changed(recorder.initial, recorder.weights[0], names) == {"net.fc.weight", "net.fc.bias"}


def test_the_model_is_found_at_any_depth() -> None:
    model, recorder = Holder(bert(), deep=True), Recorder()
    make_trainer(1, callbacks=[recorder]).finetune(model, tokens(), strategy="freeze")
    frozen = {n for n, trains in recorder.requires_grad[0].items() if not trains}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("model.encoder.bert.")}


def _groups(recorder: Recorder, strip: str = "") -> list[list[tuple[str | None, int, float]]]:
    return [
        [((name or "").replace(strip, ""), len(ids), lr) for name, ids, lr in zip(names, groups, lrs, strict=True)]
        for names, groups, lrs in zip(recorder.group_names, recorder.groups, recorder.group_lrs, strict=True)
    ]


def test_gradual_unfreeze_on_a_compiled_vit_gives_the_groups_of_the_plain_one() -> None:
    runs = []
    for factory in (timm_vit, compiled(timm_vit)):
        model, recorder = Holder(factory()), Recorder()
        strategy = ("gradual_unfreeze", 1)
        make_trainer(4, callbacks=[recorder]).finetune(model, images(), strategy=strategy, layer_lr_decay=0.5)
        runs.append((model, recorder))
    (plain, first), (wrapped, second) = runs
    assert _groups(first) == _groups(second, strip="_orig_mod.")
    assert [n for n in first.group_names[-1] if n] == ["net.stem", "net.blocks.0", "net.blocks.1 + net.norm"][::-1]
    ids = {id(p): n for n, p in wrapped.named_parameters()}
    last = [sorted(ids[i].replace("_orig_mod.", "") for i in group) for group in second.groups[-1]]
    names = {id(p): n for n, p in plain.named_parameters()}
    assert last == [sorted(names[i] for i in group) for group in first.groups[-1]]  # the same parameters


def test_bert_layer_decay_gives_one_group_per_encoder_layer_halving_downwards() -> None:
    model, recorder = Holder(bert(layers=3)), Recorder()
    strategy = ("gradual_unfreeze", 1)
    make_trainer(6, callbacks=[recorder]).finetune(model, tokens(), strategy=strategy, layer_lr_decay=0.5)
    names, lrs, groups = recorder.group_names[-1], recorder.group_lrs[-1], recorder.groups[-1]
    layered = [(n, lr, g) for n, lr, g in zip(names, lrs, groups, strict=True) if n]
    expected = ["net.bert.pooler", *(f"net.bert.encoder.layer.{i}" for i in (2, 1, 0)), "net.bert.embeddings"]
    assert [n for n, _, _ in layered] == expected
    for (_, upper, _), (_, lower, _) in itertools.pairwise(layered):
        assert lower == pytest.approx(0.5 * upper)
    params = dict(model.named_parameters())
    for name, _, ids in layered:
        assert sorted(ids) == sorted(id(p) for n, p in params.items() if n.startswith(name + "."))
    head = [g for n, g in zip(names, groups, strict=True) if not n]
    assert sorted(i for g in head for i in g) == sorted(id(p) for n, p in params.items() if "classifier" in n)


def test_the_plan_says_what_the_anatomy_found() -> None:
    plan = describe_schedule(Holder(timm_resnet()), ("freeze_unfreeze", 1), max_epochs=2)
    assert "timm ResNet at `net`: freezes `net` except its head `net.fc`" in str(plan)
    assert "(found by the anatomy)" in str(plan)


# ------------------------------------------------------------------------------------ attr_names
@pytest.mark.parametrize("selector", ["net[:-1]", r"re:net\.(conv1|bn1|layer\d)"])
def test_attr_names_take_selectors(selector: str) -> None:
    model, recorder = Holder(timm_resnet()), Recorder()
    trainer = make_trainer(1, callbacks=[recorder])
    trainer.finetune(model, images(), strategy="freeze", attr_names=selector, train_bn=False)
    trains = {n for n, grad in recorder.requires_grad[0].items() if grad}
    assert trains == {"net.fc.weight", "net.fc.bias"}


def test_a_misspelt_attr_name_suggests_the_right_one() -> None:
    with pytest.raises(MissingModuleError, match=r"no child module 'nett'.*Did you mean 'net'"):
        make_trainer(1).finetune(Holder(timm_resnet()), images(), strategy="freeze", attr_names="nett.layer4")


# -------------------------------------------------------------------------------------- refusals
class StepCounter(pl.Callback):
    steps = 0

    def on_train_batch_start(self, *args: Any) -> None:
        StepCounter.steps += 1


@pytest.mark.parametrize("train_bn", [True, False])
def test_freezing_the_head_with_the_backbone_is_refused_before_any_step(train_bn: bool) -> None:
    model, counter = Holder(timm_resnet()), StepCounter()
    StepCounter.steps = 0
    message = r"freezes `net`, which hold every parameter of Holder .*The head `net.fc` .*Leave attr_names out"
    with pytest.raises(ScheduleError, match=message):
        make_trainer(1, callbacks=[counter]).finetune(
            model, images(), strategy=("freeze_unfreeze", 1), attr_names="net", train_bn=train_bn
        )
    assert StepCounter.steps == 0


def test_a_frozen_module_without_parameters_is_warned_about() -> None:
    model = Holder(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.ReLU(), nn.Linear(8, 3)))
    with pytest.warns(UserWarning, match=r"`net.2` \(ReLU\) holds no parameters, so freezing it freezes nothing"):
        make_trainer(1).finetune(model, images(), strategy=("freeze_unfreeze", 1), attr_names=["net.1", "net.2"])


def test_tied_weights_between_frozen_and_training_modules_are_warned_about() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = Holder(transformers.AutoModelForMaskedLM.from_config(config))
    tied = "`net.cls.predictions.decoder.weight` is the same parameter as `net.bert.embeddings.word_embeddings.weight`"
    with pytest.warns(UserWarning, match=re.escape(f"{tied} (tied weights)")):
        make_trainer(1).finetune(model, tokens(), strategy=("freeze_unfreeze", 1))


def test_a_head_made_only_of_tied_weights_is_warned_about_then_refused() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2)
    model = Holder(transformers.AutoModelForCausalLM.from_config(config))  # lm_head.weight is wte.weight
    expected = re.escape("`net.lm_head.weight` is the same parameter as `net.transformer.wte.weight` (tied weights)")
    with pytest.warns(UserWarning, match=expected), pytest.raises(ScheduleError, match="nothing trains before"):
        make_trainer(1).finetune(model, tokens(), strategy=("freeze_unfreeze", 1))


def test_the_feature_cache_refuses_a_head_inside_the_frozen_model() -> None:
    with pytest.raises(ConfigurationError, match=r"the head `net.fc` trains inside `net`"):
        make_trainer(1).finetune(Holder(timm_resnet()), images(), strategy="freeze", cache_features=True)


def test_the_plan_names_the_head_that_trains_beside_a_frozen_pooler() -> None:
    plan = describe_schedule(Holder(bert()), ("freeze_unfreeze", 1), max_epochs=2)
    assert plan.epochs[0].training == [("net.classifier", 16 * 3 + 3)]
