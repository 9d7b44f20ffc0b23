"""The Flash docs' custom callback runs unchanged apart from its import line."""

from __future__ import annotations

import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer

from finetune_strategies import FlashBaseFinetuning


# Verbatim from Flash's strategies page (only the import differs).
class FeatureExtractorFreezeUnfreeze(FlashBaseFinetuning):
    def __init__(self, unfreeze_epoch: int = 5, train_bn: bool = True):
        # this will set self.attr_names as ["backbone"]
        super().__init__("backbone", train_bn)
        self._unfreeze_epoch = unfreeze_epoch

    def finetune_function(self, pl_module, current_epoch, optimizer, opt_idx):
        # unfreeze any module you want by overriding this function
        # When ``current_epoch`` is 5, backbone will start to be trained.
        if current_epoch == self._unfreeze_epoch:
            self.unfreeze_and_extend_param_group(
                pl_module.backbone,
                optimizer,
            )


def test_flash_custom_callback_runs_unchanged() -> None:
    model, rec = TinyClassifier(), Recorder()
    trainer = make_trainer(3, callbacks=[rec])
    trainer.finetune(model, loader(), strategy=FeatureExtractorFreezeUnfreeze(unfreeze_epoch=1))

    assert not rec.requires_grad[0]["backbone.0.weight"]
    assert rec.requires_grad[1]["backbone.0.weight"]
    # A new group that mirrors group 0's lr, instead of Flash's in-place extension of group 0.
    backbone = [id(p) for n, p in model.named_parameters() if n in {"backbone.0.weight", "backbone.0.bias"}]
    assert set(backbone) <= set(rec.groups[1][1])
    assert rec.group_lrs[1] == [0.1, 0.1]
    assert torch.equal(rec.initial["backbone.0.weight"], rec.weights[0]["backbone.0.weight"])
    assert not torch.equal(rec.weights[0]["backbone.0.weight"], rec.weights[2]["backbone.0.weight"])


def test_flash_base_is_our_base() -> None:
    from finetune_strategies import FinetuningStrategy

    assert FlashBaseFinetuning is FinetuningStrategy
    assert FeatureExtractorFreezeUnfreeze().attr_names == ("backbone",)
