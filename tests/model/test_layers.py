"""What "the last n layers" means, pinned on timm's resnet18."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import timm
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from finetune_strategies import ScheduleError, UnfreezeMilestones, list_layers


class ResNetModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model("resnet18", pretrained=False, num_classes=0)
        self.head = nn.Linear(512, 3)


def unfrozen_names(unit: Any, num_layers: int = 2) -> list[list[str]]:
    module = ResNetModule()
    names = {id(m): n for n, m in module.named_modules()}
    strategy = UnfreezeMilestones((1, 2), num_layers, layer_unit=unit)
    return [[names[id(m)] for m in phase.modules] for phase in strategy.unfreeze_phases(module)]


def test_param_modules_last_two() -> None:
    first, rest = unfrozen_names("param_modules")
    assert first == ["backbone.layer4.1.conv2", "backbone.layer4.1.bn2"]
    assert rest[:2] == ["backbone.conv1", "backbone.bn1"]
    assert len(rest) == 38


def test_blocks_last_two() -> None:
    module = ResNetModule()
    strategy = UnfreezeMilestones((1, 2), 2, layer_unit="blocks")
    phases = strategy.unfreeze_phases(module)
    assert phases[0].label == "backbone.layer4.0, backbone.layer4.1"
    names = {id(m): n for n, m in module.named_modules()}
    assert [names[id(m)] for m in phases[0].modules] == [
        "backbone.layer4.0.conv1",
        "backbone.layer4.0.bn1",
        "backbone.layer4.0.conv2",
        "backbone.layer4.0.bn2",
        "backbone.layer4.0.downsample.0",
        "backbone.layer4.0.downsample.1",
        "backbone.layer4.1.conv1",
        "backbone.layer4.1.bn1",
        "backbone.layer4.1.conv2",
        "backbone.layer4.1.bn2",
    ]
    assert len(list_layers([("backbone", module.backbone)], "blocks")) == 9


def test_flash_leaves_match_flash_and_hold_no_parameters() -> None:
    first, _ = unfrozen_names("flash_leaves")
    assert first == ["backbone.global_pool.flatten", "backbone.fc"]
    module = ResNetModule()
    flash = BaseFinetuning.flatten_modules(module.backbone)
    ours = [m for layer in list_layers([("backbone", module.backbone)], "flash_leaves") for m in layer.modules]
    assert [id(m) for m in flash] == [id(m) for m in ours]
    assert not any(p for m in flash[-2:] for p in m.parameters())


def test_blocks_on_a_plain_sequential_are_its_parameter_units() -> None:
    # No timm group_matcher: the structural rule applies; an MLP without blocks gives one layer per unit.
    module = TinyClassifier()
    first, rest = UnfreezeMilestones((1, 2), 1, layer_unit="blocks").unfreeze_phases(module)
    assert first.label == "backbone.3"
    assert first.modules == (module.backbone[3],)
    assert rest.modules == (module.backbone[0], module.backbone[2])


def test_too_many_layers_fails_at_setup_with_both_counts() -> None:
    with pytest.raises(ScheduleError, match=r"last 5 layers.*only 3 layers"):
        make_trainer(2).finetune(TinyClassifier(), loader(), strategy=("unfreeze_milestones", ((0, 1), 5)))


def test_blocks_unit_trains_on_timm_model() -> None:
    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
            self.head = nn.Linear(self.backbone.num_features, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.head(self.backbone(batch[0])), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    model, rec = Tiny(), Recorder()
    make_trainer(2, callbacks=[rec]).finetune(
        model,
        torch.utils.data.DataLoader(data, batch_size=2),
        strategy={
            "strategy": "unfreeze_milestones",
            "milestones": (1, 5),
            "num_layers": 1,
            "layer_unit": "blocks",
        },
        train_bn=False,
    )
    trainable = {n for n, flag in rec.requires_grad[1].items() if flag and n.startswith("backbone")}
    assert trainable == {
        "backbone.layer4.0.conv1.weight",
        "backbone.layer4.0.conv2.weight",
        "backbone.layer4.0.downsample.1.weight",
    }
