"""Run fine-tuning scenarios under FSDP2 (``ModelParallelStrategy`` + ``fully_shard``) on 2 CPU processes.

    python tests/helpers/fsdp_scenarios.py OUTDIR SCENARIO [SCENARIO ...]   (or ``all``)

As ``ddp_scenarios.py``: one launch runs every scenario, each its own ``fit`` in one process group,
and writes ``OUTDIR/<scenario>.rank<r>.pt`` (weights gathered whole, see ``ddp_helpers.Dump``). A
scenario that must fail writes its error to ``OUTDIR/<scenario>.error.rank<r>.txt`` instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from ddp_helpers import (
    CALLBACKS,
    GLOBAL_BATCH,
    PHASE_SCHEDULER,
    PLATEAU,
    WORLD,
    Data,
    Dump,
    Net,
    ScoredData,
    ScoredNet,
    ShardedNet,
    fsdp2,
    make_callback,
    make_trainer,
    shutdown,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributed.fsdp import fully_shard

from finetune_strategies import DriftMonitor, FinetuningError, WiSEFT, resolve_strategy
from finetune_strategies.core import distributed

PER_RANK = GLOBAL_BATCH // WORLD
PLATEAU_EPOCHS = 4
CACHE = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "cache_features": True, "train_bn": False, "bn_eval": True}
LP_FT = {"strategy": "lp_ft", "probe_epochs": 1}  # a cached linear probe, then everything at lr / 10
LORA = ["lora", "lora_unfreeze", "lora_deepspeed_unfreeze"]  # ddp_helpers.LORA_SPECS, where peft is installed


class ShardedScoredNet(ScoredNet):
    configure_model = ShardedNet.configure_model


class HeadOnlySharded(Net):
    """A ``configure_model`` that forgets the backbone: its parameters stay plain tensors."""

    def configure_model(self) -> None:
        fully_shard(self.head, mesh=self.device_mesh["data_parallel"])


ERRORS: dict[str, tuple[Callable[[], pl.LightningModule], Any, Callable[[], list[pl.Callback]]]] = {
    "unsharded_backbone": (HeadOnlySharded, ("freeze_unfreeze", 1), list),
    "wise_ft": (ShardedNet, ("freeze_unfreeze", 1), lambda: [WiSEFT(alphas=0.5)]),
    "drift": (ShardedNet, ("freeze_unfreeze", 1), lambda: [DriftMonitor(log=False)]),
}
"""Combinations that must fail before anything trains: the model, the strategy spec and other callbacks."""


def fit(out: Path, name: str, spec: Any, *, meta: bool = False, **kwargs: Any) -> None:
    trainer = make_trainer(devices=WORLD, strategy=fsdp2(), callbacks=[Dump(out / name)], **kwargs)
    with trainer.init_module(empty_init=meta):  # on the meta device: materialised after fully_shard
        model = ShardedNet()
    callback = make_callback(spec) if isinstance(spec, str) else resolve_strategy(spec)
    trainer.finetune(model, Data(PER_RANK), strategy=callback)


def plateau(out: Path, name: str = "plateau", **trainer_kwargs: Any) -> None:
    """The ranks log different validation scores; rank 0's decide. The stage's best weights are put back."""
    callbacks = [Dump(out / name), *trainer_kwargs.pop("callbacks", [])]
    trainer = make_trainer(
        trainer_kwargs.pop("max_epochs", PLATEAU_EPOCHS),
        devices=WORLD,
        strategy=fsdp2(),
        callbacks=callbacks,
        limit_val_batches=1.0,
        **trainer_kwargs,
    )
    trainer.finetune(ShardedScoredNet(), ScoredData(PER_RANK), strategy=resolve_strategy(PLATEAU))


def resume(out: Path, name: str, callback_name: str, *, early_layout: bool = True) -> None:
    """Stop after epoch 1 with a sharded checkpoint (a folder), resume in a new fit for the last epoch."""
    ckpt = out / f"{name}_ckpt"
    first = make_trainer(2, devices=WORLD, strategy=fsdp2(), enable_checkpointing=True, callbacks=[_last(ckpt)])
    first.finetune(ShardedNet(), Data(PER_RANK), strategy=make_callback(callback_name))
    original = distributed.before_checkpoint_load
    if not early_layout:  # the power check: nothing rebuilt before the strategy loads the optimizer state
        distributed.before_checkpoint_load = lambda trainer, hook: None  # type: ignore[assignment]
    try:
        second = make_trainer(devices=WORLD, strategy=fsdp2(), callbacks=[Dump(out / name)])
        callback = make_callback(callback_name)
        second.finetune(ShardedNet(), Data(PER_RANK), strategy=callback, ckpt_path=ckpt / "last.ckpt")
    finally:
        distributed.before_checkpoint_load = original


def resume_plateau(out: Path) -> None:
    """Stop after epoch 1, when the stage has ended on its plateau and its best weights are in the
    checkpoint; the resumed fit puts them back at the transition (epoch 2)."""
    ckpt = out / "resume_plateau_ckpt"
    first = make_trainer(
        2, devices=WORLD, strategy=fsdp2(), enable_checkpointing=True, callbacks=[_last(ckpt)], limit_val_batches=1.0
    )
    first.finetune(ShardedScoredNet(), ScoredData(PER_RANK), strategy=resolve_strategy(PLATEAU))
    second = make_trainer(
        PLATEAU_EPOCHS, devices=WORLD, strategy=fsdp2(), callbacks=[Dump(out / "resume_plateau")], limit_val_batches=1.0
    )
    second.finetune(
        ShardedScoredNet(), ScoredData(PER_RANK), strategy=resolve_strategy(PLATEAU), ckpt_path=ckpt / "last.ckpt"
    )


def _last(folder: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)


def expect_error(out: Path, name: str) -> None:
    model, spec, callbacks = ERRORS[name]
    trainer = make_trainer(devices=WORLD, strategy=fsdp2(), callbacks=[Dump(out / name), *callbacks()])
    try:
        trainer.finetune(model(), Data(PER_RANK), strategy=resolve_strategy(spec))
    except FinetuningError as error:
        (out / f"{name}.error.rank{trainer.global_rank}.txt").write_text(f"{type(error).__name__}: {error}")


def lora(out: Path) -> None:
    """``lora``: peft injects the adapters in ``setup``, before ``configure_model`` shards them with the rest."""
    if importlib.util.find_spec("peft") is None:
        return
    for name in LORA:
        fit(out, name, name)
    resume(out, "lora_resume", "lora_unfreeze")


SCENARIOS: dict[str, Callable[[Path], None]] = {
    **{name: (lambda out, name=name: fit(out, name, name)) for name in CALLBACKS},
    "phase_scheduler": lambda out: fit(out, "phase_scheduler", PHASE_SCHEDULER),
    "meta_init": lambda out: fit(out, "meta_init", "freeze_unfreeze", meta=True),
    "cache": lambda out: fit(out, "cache", CACHE),
    "lp_ft": lambda out: fit(out, "lp_ft", LP_FT),
    "plateau": plateau,
    "resume": lambda out: resume(out, "resume", "freeze_unfreeze"),
    "resume_deepspeed": lambda out: resume(out, "resume_deepspeed", "unfreeze_milestones_deepspeed"),
    "resume_l2_sp": lambda out: resume(out, "resume_l2_sp", "l2_sp"),  # w0 gathered whole, cut into shards
    "resume_late_layout": lambda out: resume(out, "resume_late_layout", "freeze_unfreeze", early_layout=False),
    "resume_plateau": resume_plateau,
    "lora": lora,
    **{name: (lambda out, name=name: expect_error(out, name)) for name in ERRORS},
}


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    names = list(SCENARIOS) if argv[1:] == ["all"] else argv[1:]
    for name in names:
        SCENARIOS[name](out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
