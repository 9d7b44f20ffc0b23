"""FSDP1 (``FSDPStrategy(use_orig_params=True)``) scenarios on CUDA, one launch, as ``fsdp_scenarios.py``.

    python tests/gpu/fsdp1_scenarios.py OUTDIR

Runs on ``min(GPUs, 2)`` ranks (FSDP1 refuses CPU devices, and Lightning refuses ``FSDPStrategy`` on
CPU). The wrapping policy makes every ``Linear`` and ``LayerNorm`` its own FSDP unit, so that no unit
holds both frozen and trainable parameters (see docs/distributed.md). Writes ``OUTDIR/<scenario>.rank<r>.pt``
and, for combinations that must fail, ``OUTDIR/<scenario>.error.rank<r>.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers

import torch
from ddp_helpers import (
    CALLBACKS,
    GLOBAL_BATCH,
    PLATEAU,
    Data,
    Dump,
    Net,
    ScoredData,
    ScoredNet,
    make_callback,
    make_trainer,
    shutdown,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from finetune_strategies import FinetuningError, resolve_strategy

WORLD = min(torch.cuda.device_count(), 2)
PER_RANK = GLOBAL_BATCH // max(WORLD, 1)
PLATEAU_EPOCHS = 4
PLATEAU_LAST = {**PLATEAU, "restore_best": False}  # FSDP1 refuses restore_best (see distributed.check_engine)
UNITS = {nn.Linear, nn.LayerNorm}  # one FSDP unit per layer: frozen and trainable parameters never share one
SCHEDULED = [name for name in CALLBACKS if name not in ("l2_sp", "auto_rgn")]  # FSDP1 refuses both
L2_SP = {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "l2_sp": 0.5}


def fsdp1(**kwargs: Any) -> FSDPStrategy:
    return FSDPStrategy(auto_wrap_policy=UNITS, **{"use_orig_params": True, **kwargs})


def gpu_trainer(epochs: int, devices: int, strategy: Any, **kwargs: Any) -> Any:
    """A quiet trainer on ``devices`` GPUs (not ``deterministic``: cuBLAS would need a workspace setting)."""
    return make_trainer(epochs, accelerator="gpu", devices=devices, strategy=strategy, deterministic=False, **kwargs)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in SCHEDULED:
        trainer = gpu_trainer(3, WORLD, fsdp1(), callbacks=[Dump(out / name)])
        trainer.finetune(Net(), Data(PER_RANK), strategy=make_callback(name))
    trainer = gpu_trainer(PLATEAU_EPOCHS, WORLD, fsdp1(), callbacks=[Dump(out / "plateau")], limit_val_batches=1.0)
    trainer.finetune(ScoredNet(), ScoredData(PER_RANK), strategy=resolve_strategy(PLATEAU_LAST))
    for name, callback in (("resume", "freeze_unfreeze"), ("resume_deepspeed", "unfreeze_milestones_deepspeed")):
        ckpt = out / f"{name}_ckpt"
        checkpoint = ModelCheckpoint(dirpath=ckpt, save_last=True, save_top_k=0)
        first = gpu_trainer(
            2, WORLD, fsdp1(state_dict_type="sharded"), callbacks=[checkpoint], enable_checkpointing=True
        )
        first.finetune(Net(), Data(PER_RANK), strategy=make_callback(callback))
        second = gpu_trainer(3, WORLD, fsdp1(state_dict_type="sharded"), callbacks=[Dump(out / name)])
        second.finetune(Net(), Data(PER_RANK), strategy=make_callback(callback), ckpt_path=ckpt / "last.ckpt")
    specs = {"flat_params": ("freeze_unfreeze", 1), "restore_best": {**PLATEAU, "restore_best": True}, "l2_sp": L2_SP}
    for name, options in (("flat_params", {"use_orig_params": False}), ("restore_best", {}), ("l2_sp", {})):
        spec = specs[name]
        trainer = gpu_trainer(3, WORLD, fsdp1(**options), callbacks=[Dump(out / name)], limit_val_batches=1.0)
        try:
            trainer.finetune(ScoredNet(), ScoredData(PER_RANK), strategy=resolve_strategy(spec))
        except FinetuningError as error:
            (out / f"{name}.error.rank{trainer.global_rank}.txt").write_text(f"{type(error).__name__}: {error}")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
