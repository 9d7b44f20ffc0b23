"""ImageClassifier: settings, optimizers and schedulers, and real fine-tuning runs on image folders."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from image_helpers import BACKBONE, SIZE, make_folder, trainer
from torch import nn
from torch.optim import lr_scheduler

from finetune_strategies.errors import ModelConfigError
from finetune_strategies.image import ImageClassificationData, ImageClassifier


def _model(**kwargs: Any) -> ImageClassifier:
    options: dict[str, Any] = {"num_classes": 2, "backbone": BACKBONE, "pretrained": False}
    options.update(kwargs)
    return ImageClassifier(**options)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return make_folder(root / "train"), make_folder(root / "val", per_class=2, seed=1)


def _data(folders, **kwargs: Any) -> ImageClassificationData:
    train, val = folders
    options: dict[str, Any] = {"batch_size": 4, "image_size": SIZE}
    options.update(kwargs)
    return ImageClassificationData.from_folders(train, val, **options)


def _split_bn(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters of non-BatchNorm layers, parameters of BatchNorm layers)."""
    bn = nn.modules.batchnorm._BatchNorm
    layers = list(module.modules())
    other = [p for m in layers if not isinstance(m, bn) for p in m.parameters(recurse=False)]
    norms = [p for m in layers if isinstance(m, bn) for p in m.parameters(recurse=False)]
    return other, norms


class _Phases(pl.Callback):
    """Per epoch (at its first batch): requires_grad of backbone/BN/head and the optimizer's groups."""

    def __init__(self) -> None:
        self.backbone: list[set[bool]] = []
        self.bn: list[set[bool]] = []
        self.head: list[set[bool]] = []
        self.groups: list[list[set[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        other, norms = _split_bn(pl_module.backbone)
        self.backbone.append({p.requires_grad for p in other})
        self.bn.append({p.requires_grad for p in norms})
        self.head.append({p.requires_grad for p in pl_module.head.parameters()})
        self.groups.append([{id(p) for p in g["params"]} for g in trainer.optimizers[0].param_groups])


def test_structure_and_forward():
    model = _model(num_classes=3, head_dropout=0.2, labels=["a", "b", "c"])
    assert isinstance(model.head[0], nn.Dropout)
    assert model.head[-1].in_features == model.num_features
    assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 3)
    assert model.hparams["backbone"] == BACKBONE
    assert model.data_config()["input_size"] == (3, 160, 160)
    assert _model(image_size=24).data_config()["input_size"] == (3, 24, 24)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": None}, "needs num_classes"),
        ({"num_classes": 1}, r"num_classes.*>= 2"),
        ({"num_classes": 2.0}, r"num_classes.*>= 2"),
        ({"labels": ["a"]}, "1 names but num_classes=2"),
        ({"optimizer": "adamm"}, r"Unknown optimizer 'adamm'.*Did you mean Adam"),
        ({"scheduler": "cosin"}, r"Unknown scheduler 'cosin'.*cosine"),
        ({"head_dropout": 1.0}, r"head_dropout.*\[0, 1\)"),
        ({"lr": 0}, "lr"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_settings_fail_early(kwargs, match):
    with pytest.raises((ModelConfigError, ValueError), match=match):
        _model(**kwargs)


def test_optimizer_holds_only_trainable_parameters():
    model = _model(optimizer="sgd", lr=0.05, weight_decay=1e-4, optimizer_kwargs={"momentum": 0.9})
    for p in model.backbone.parameters():
        p.requires_grad = False
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.head.parameters()}
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    ("name", "kwargs", "cls", "interval"),
    [
        ("cosine", {}, lr_scheduler.CosineAnnealingLR, "epoch"),
        ("step", {}, lr_scheduler.StepLR, "epoch"),
        ("plateau", {}, lr_scheduler.ReduceLROnPlateau, "epoch"),
        ("onecycle", {}, lr_scheduler.OneCycleLR, "step"),
        ("MultiStepLR", {"milestones": [1], "interval": "step"}, lr_scheduler.MultiStepLR, "step"),
    ],
)
def test_schedulers_by_name_in_a_real_run(folders, name, kwargs, cls, interval):
    model = _model(scheduler=name, scheduler_kwargs=kwargs)
    run = trainer(2)
    run.finetune(model, _data(folders), strategy=("freeze_unfreeze", 1))
    config = run.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, cls)
    assert config.interval == interval
    assert len(run.optimizers[0].param_groups) == 2  # the backbone joined as its own group


def test_scheduler_with_missing_arguments_is_explained():
    model = _model(scheduler="LambdaLR")
    with pytest.raises(ModelConfigError, match="Cannot build scheduler LambdaLR"):
        model.configure_optimizers()


def test_freeze_unfreeze_on_image_folders(folders):
    model = _model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    phases = _Phases()
    run = trainer(3, callbacks=[phases])
    run.finetune(model, _data(folders), strategy=("freeze_unfreeze", 2), train_bn=False)
    assert phases.backbone == [{False}, {False}, {True}]
    assert phases.bn == [{False}, {False}, {False}]  # train_bn=False keeps BatchNorm frozen
    assert phases.head == [{True}, {True}, {True}]
    head_ids = {id(p) for p in model.head.parameters()}
    backbone_ids = {id(p) for p in _split_bn(model.backbone)[0]}
    assert phases.groups[0] == [head_ids]
    assert phases.groups[2] == [head_ids, backbone_ids]
    # the backbone trained only in the last epoch: its weights moved, and the metrics were logged
    after = model.backbone.state_dict()
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])
    assert {"val_acc", "val_loss", "train_acc"} <= set(run.callback_metrics)


def test_freeze_keeps_backbone_weights_bitwise(folders):
    model = _model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" not in k}
    head_before = model.head[-1].weight.clone()
    run = trainer(2)
    run.finetune(model, _data(folders), strategy="freeze", train_bn=False)
    after = model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not torch.equal(head_before, model.head[-1].weight)


def test_torchvision_backbone_trains(folders):
    model = ImageClassifier(num_classes=2, backbone="torchvision:mobilenet_v3_small", pretrained=False)
    phases = _Phases()
    run = trainer(2, callbacks=[phases], limit_train_batches=1, limit_val_batches=1)
    run.finetune(model, _data(folders, batch_size=2, image_size=32), strategy=("freeze_unfreeze", 1))
    assert phases.backbone == [{False}, {True}]
    assert phases.bn == [{True}, {True}]  # train_bn=True: BatchNorm trains while the rest is frozen
    assert model.head[-1].in_features == 1024


def test_save_backbone_then_load_it_as_pretrained(tmp_path, folders):
    source = _model()
    trainer(1).finetune(source, _data(folders), strategy="no_freeze")
    path = source.save_backbone(tmp_path / "backbone.safetensors")
    target = _model(num_classes=5, pretrained=str(path))
    assert all(torch.equal(v, target.backbone.state_dict()[k]) for k, v in source.backbone.state_dict().items())


def test_predict_step_returns_probabilities(folders):
    model = _model()
    data = ImageClassificationData.from_folders(predict_folder=folders[1], image_size=SIZE, batch_size=3)
    predictions = trainer(1).predict(model, datamodule=data)
    probs = torch.cat(predictions)
    assert probs.shape == (4, 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4))


def _checkpoint_naming(tmp_path, optimizer: str):
    import sys

    model = ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False)
    hparams = {**model.hparams, "optimizer": optimizer}
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.5.0"}, path
    )
    sys.modules.pop("this", None)  # importing `this` prints the Zen of Python: code from a file would run
    return path


def test_checkpoint_hyperparameters_cannot_import_a_module(tmp_path, capsys):
    import sys

    path = _checkpoint_naming(tmp_path, "this.Adam")
    with pytest.raises(
        ModelConfigError, match=r"'this.Adam' comes from the hyperparameters of checkpoint .*not imported"
    ):
        ImageClassifier.load_from_checkpoint(path)
    assert "this" not in sys.modules
    assert "Zen of Python" not in capsys.readouterr().out
    loaded = ImageClassifier.load_from_checkpoint(_checkpoint_naming(tmp_path, "torch.optim.AdamW"))
    assert loaded.optimizer_name == "torch.optim.AdamW"  # a class path in an imported module still loads
    assert ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False, optimizer="torch.optim.SGD")


def test_cli_ckpt_hyperparameters_cannot_import_a_module(tmp_path, capsys, monkeypatch):
    import sys

    from finetune_strategies.cli.app import main

    monkeypatch.chdir(tmp_path)
    path = _checkpoint_naming(tmp_path, "this.Adam")
    assert main(["validate", f"--ckpt_path={path}", f"--data.val_folder={make_folder(tmp_path / 'v')}"]) == 2
    assert "not imported" in capsys.readouterr().err
    assert "this" not in sys.modules
