"""Every strategy on the text task, run for real: a tiny BERT from a config, fine-tuned on CPU.

What trains each epoch (requires_grad per module), the param groups (by identity, with their lrs) and
that frozen weights stay bitwise unchanged are read from a recorder during the fit.
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
import torch
from conftest import Recorder, make_trainer
from text_helpers import ENCODER_LAYERS, make_classifier, make_data, strategy

from finetune_strategies.text import TextClassifier

ENCODER, HEAD = "model.bert.", "model.classifier."


def fit(spec: Any, epochs: int, model: TextClassifier | None = None, **trainer: Any) -> tuple[TextClassifier, Recorder]:
    model = model or make_classifier()
    recorder = Recorder()
    run = make_trainer(epochs, callbacks=[recorder, *trainer.pop("callbacks", [])], **trainer)
    run.finetune(model, make_data(), strategy=spec)
    return model, recorder


def trains(flags: dict[str, bool], prefix: str) -> set[bool]:
    """The requires_grad values of the parameters under ``prefix`` (one value: all agree)."""
    return {flag for name, flag in flags.items() if name.startswith(prefix)}


def params_of(model: torch.nn.Module, prefix: str) -> list[int]:
    return sorted(id(p) for n, p in model.named_parameters() if n.startswith(prefix))


def unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return all(torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_freeze_unfreeze_trains_the_head_then_the_encoder_as_a_new_group() -> None:
    model, rec = fit(strategy("freeze_unfreeze", unfreeze_epoch=1), 3)
    assert [trains(flags, ENCODER) for flags in rec.requires_grad] == [{False}, {True}, {True}]
    assert all(trains(flags, HEAD) == {True} for flags in rec.requires_grad)
    # epoch 0: exactly the head changed
    assert unchanged(rec.initial, rec.weights[0], ENCODER)
    assert not unchanged(rec.initial, rec.weights[0], HEAD)
    assert not unchanged(rec.weights[0], rec.weights[1], ENCODER)
    # the encoder joins as one new group, by identity, at group 0's lr / 10
    assert [len(groups) for groups in rec.groups] == [1, 2, 2]
    assert sorted(rec.groups[0][0]) == params_of(model, HEAD)
    assert sorted(rec.groups[1][1]) == params_of(model, ENCODER)
    assert rec.group_lrs[1] == [1e-2, 1e-3]


def test_gradual_unfreeze_with_layer_lr_decay_gives_one_group_per_encoder_layer() -> None:
    spec = strategy("gradual_unfreeze", start_epoch=1, layer_lr_decay=0.5)
    model, rec = fit(spec, 5)
    # the layers, top first: the pooler, each encoder layer, the embeddings; one group each
    top_down = ["model.bert.pooler", ENCODER_LAYERS[1], ENCODER_LAYERS[0], "model.bert.embeddings"]
    assert rec.group_names[-1][1:] == top_down
    assert [len(groups) for groups in rec.groups] == [1, 2, 3, 4, 5]
    lrs = rec.group_lrs[-1][1:]
    assert [later / earlier for earlier, later in itertools.pairwise(lrs)] == [0.5, 0.5, 0.5]
    for index, prefix in enumerate(top_down, start=1):
        assert set(rec.groups[-1][index]) == set(params_of(model, prefix + ".")), prefix
    # what trains grows by one layer per epoch; the layers below stay bitwise frozen until their turn
    for epoch, prefix in enumerate(top_down, start=1):
        assert trains(rec.requires_grad[epoch - 1], prefix) == {False}
        assert trains(rec.requires_grad[epoch], prefix) == {True}
        assert unchanged(rec.initial, rec.weights[epoch - 1], prefix)


def test_phases_unfreeze_the_named_layer_then_the_rest() -> None:
    phases = [{"epoch": 1, "modules": [ENCODER_LAYERS[1]], "lr": 0.004}, {"epoch": 2}]
    model, rec = fit(strategy("phases", phases=phases), 3)
    assert trains(rec.requires_grad[1], ENCODER_LAYERS[1]) == {True}
    assert trains(rec.requires_grad[1], ENCODER_LAYERS[0]) == {False}
    assert trains(rec.requires_grad[2], ENCODER) == {True}
    assert unchanged(rec.initial, rec.weights[1], ENCODER_LAYERS[0])
    assert sorted(rec.groups[1][1]) == params_of(model, ENCODER_LAYERS[1])
    assert rec.group_lrs[1][1] == 0.004
    rest = set(params_of(model, ENCODER)) - set(params_of(model, ENCODER_LAYERS[1]))
    assert set(rec.groups[2][2]) == rest


class ValidationHistory(pl.Callback):
    def __init__(self) -> None:
        self.scores: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.scores.append(float(trainer.callback_metrics["val_loss"]))


def test_a_plateau_of_the_validation_loss_unfreezes_the_encoder() -> None:
    history = ValidationHistory()
    spec = strategy("freeze_unfreeze", unfreeze_epoch=None, monitor="val_loss", patience=1, restore_best=False)
    # a tiny lr: the head barely moves, so the loss stops improving within a few epochs
    _, rec = fit(spec, 5, model=make_classifier(lr=1e-5, optimizer="sgd"), callbacks=[history])
    best, plateau = history.scores[0], None
    for epoch, score in enumerate(history.scores[1:], start=1):
        if score >= best:
            plateau = epoch
            break
        best = score
    assert plateau is not None, history.scores
    flags = [trains(f, ENCODER) for f in rec.requires_grad]
    assert flags == [{False}] * (plateau + 1) + [{True}] * (4 - plateau), (history.scores, flags)


def test_lp_ft_probes_with_a_fully_frozen_encoder_then_trains_everything() -> None:
    # the feature cache keys positional tensor inputs; a transformers encoder is called with keywords
    _, rec = fit(strategy("lp_ft", probe_epochs=1, cache_features=False), 3)
    assert [trains(flags, ENCODER) for flags in rec.requires_grad] == [{False}, {True}, {True}]
    assert unchanged(rec.initial, rec.weights[0], ENCODER)
    assert rec.group_lrs[1] == [1e-2, 1e-3]


def distance(rec: Recorder, prefix: str) -> float:
    final = rec.weights[-1]
    return sum(float((final[k] - rec.initial[k]).pow(2).sum()) for k in final if k.startswith(prefix)) ** 0.5


def test_l2_sp_keeps_the_encoder_closer_to_its_start() -> None:
    _, plain = fit(strategy("freeze_unfreeze", unfreeze_epoch=1), 3)
    _, anchored = fit(strategy("freeze_unfreeze", unfreeze_epoch=1, l2_sp=100.0), 3)
    assert unchanged(anchored.initial, anchored.weights[0], ENCODER)
    assert 0 < distance(anchored, ENCODER) < 0.5 * distance(plain, ENCODER)
