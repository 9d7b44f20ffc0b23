"""Every built-in strategy, run for real: what trains, which groups exist, which weights move."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import Recorder, TinyClassifier, loader, make_trainer

HEAD = {"head.weight", "head.bias"}
BN = {"backbone.2.weight", "backbone.2.bias"}
LIN0 = {"backbone.0.weight", "backbone.0.bias"}
LIN3 = {"backbone.3.weight", "backbone.3.bias"}
ALL = HEAD | BN | LIN0 | LIN3

# strategy spec -> per epoch: (trainable names, param groups as name sets, group lrs)
SCHEDULES: dict[str, tuple[Any, list[tuple[set[str], list[set[str]], list[float]]]]] = {
    "no_freeze": ("no_freeze", [(ALL, [ALL], [0.1])] * 4),
    "freeze": ("freeze", [(HEAD | BN, [HEAD | BN], [0.1])] * 4),
    "freeze_unfreeze": (
        ("freeze_unfreeze", 2),
        [(HEAD | BN, [HEAD | BN], [0.1])] * 2 + [(ALL, [HEAD | BN, LIN0 | LIN3], [0.1, 0.01])] * 2,
    ),
    "unfreeze_milestones": (
        ("unfreeze_milestones", ((1, 3), 1)),
        [(HEAD | BN, [HEAD | BN], [0.1])]
        + [(HEAD | BN | LIN3, [HEAD | BN, LIN3], [0.1, 0.01])] * 2
        + [(ALL, [HEAD | BN, LIN3, LIN0], [0.1, 0.01, 0.01])],
    ),
    "freeze_unfreeze_deepspeed": (
        ("freeze_unfreeze_deepspeed", 2),
        [(HEAD | BN, [HEAD | BN, LIN0 | LIN3], [0.1, 0.0])] * 2 + [(ALL, [HEAD | BN, LIN0 | LIN3], [0.1, 0.01])] * 2,
    ),
    "unfreeze_milestones_deepspeed": (
        ("unfreeze_milestones_deepspeed", ((1, 3), 1)),
        [(HEAD | BN, [HEAD | BN, LIN3, LIN0], [0.1, 0.0, 0.0])]
        + [(HEAD | BN | LIN3, [HEAD | BN, LIN3, LIN0], [0.1, 0.01, 0.0])] * 2
        + [(ALL, [HEAD | BN, LIN3, LIN0], [0.1, 0.01, 0.01])],
    ),
}
SCHEDULES["no_freeze_deepspeed"] = ("no_freeze_deepspeed", SCHEDULES["no_freeze"][1])
SCHEDULES["freeze_deepspeed"] = ("freeze_deepspeed", SCHEDULES["freeze"][1])


def run(spec: Any, epochs: int = 4, **kwargs: Any) -> tuple[TinyClassifier, Recorder]:
    model, recorder = TinyClassifier(**kwargs.pop("model", {})), Recorder()
    make_trainer(epochs, callbacks=[recorder]).finetune(model, loader(), strategy=spec, **kwargs)
    return model, recorder


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule(name: str) -> None:
    spec, expected = SCHEDULES[name]
    model, rec = run(spec)
    names = {id(p): n for n, p in model.named_parameters()}
    for epoch, (trainable, groups, lrs) in enumerate(expected):
        assert {n for n, flag in rec.requires_grad[epoch].items() if flag} == trainable, f"epoch {epoch}"
        assert [{names[i] for i in group} for group in rec.groups[epoch]] == groups, f"epoch {epoch}"
        assert rec.group_lrs[epoch] == pytest.approx(lrs), f"epoch {epoch}"
        before = rec.initial if epoch == 0 else rec.weights[epoch - 1]
        after = rec.weights[epoch]
        for param in ALL:
            moved = not torch.equal(before[param], after[param])
            assert moved == (param in trainable), f"{param} at epoch {epoch}: moved={moved}"


def test_every_group_param_is_in_exactly_one_group() -> None:
    model, rec = run(("unfreeze_milestones", ((1, 2), 2)))
    final = rec.groups[-1]
    flat = [i for group in final for i in group]
    assert len(flat) == len(set(flat)) == len(list(model.parameters()))


def test_unfreeze_lr_is_explicit_or_divided() -> None:
    _, rec = run(("freeze_unfreeze", 1), epochs=2, lr=0.003)
    assert rec.group_lrs[1] == pytest.approx([0.1, 0.003])
    _, rec = run(("freeze_unfreeze", 1), epochs=2, initial_denom_lr=4.0)
    assert rec.group_lrs[1] == pytest.approx([0.1, 0.025])


def test_unfreeze_at_epoch_zero() -> None:
    _, rec = run(("freeze_unfreeze", 0), epochs=1)
    assert all(rec.requires_grad[0].values())
    assert len(rec.groups[0]) == 2


def test_phase_after_max_epochs_warns() -> None:
    with pytest.warns(UserWarning, match="max_epochs=2 ends training before it"):
        run(("freeze_unfreeze", 5), epochs=2)


def test_adamw_weight_decay_leaves_pending_deepspeed_groups_untouched() -> None:
    # lr 0 plus no gradient: decoupled weight decay must not shrink the pending parameters.
    _, rec = run(("freeze_unfreeze_deepspeed", 2), epochs=3, model={"optimizer": "adamw"})
    for epoch in range(2):
        for param in LIN0 | LIN3:
            before = rec.initial if epoch == 0 else rec.weights[epoch - 1]
            assert torch.equal(before[param], rec.weights[epoch][param])
    assert not torch.equal(rec.weights[1]["backbone.0.weight"], rec.weights[2]["backbone.0.weight"])
