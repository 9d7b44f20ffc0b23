"""Run ``*_deepspeed`` strategies under the real DeepSpeed engine, ZeRO stage 1, 2 and 3, on 2 ranks.

    python tests/helpers/deepspeed_scenarios.py OUTDIR [SCENARIO ...]

With a GPU per rank Lightning's own ``DeepSpeedStrategy`` runs; elsewhere ``CPUDeepSpeedStrategy``
(DeepSpeed's CPU accelerator over gloo). Writes ``OUTDIR/<scenario>.rank<r>.pt`` (weights gathered
whole under ZeRO-3, see ``ddp_helpers.Dump``), and for combinations that must fail,
``OUTDIR/<scenario>.error.rank<r>.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from ddp_helpers import PHASE_SCHEDULER, WORLD, Data, Dump, Net, make_callback, make_trainer, shutdown
from deepspeed_cpu import deepspeed_strategy
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import FinetuningError, TrainableMonitor, resolve_strategy

SCENARIOS: dict[str, tuple[int, str]] = {
    "stage1_freeze_unfreeze": (1, "freeze_unfreeze_deepspeed"),
    "stage2_milestones": (2, "unfreeze_milestones_deepspeed"),
    "stage3_freeze_unfreeze": (3, "freeze_unfreeze_deepspeed"),
    "stage3_decay": (3, "deepspeed_decay"),
}
ERRORS: dict[str, tuple[int, Any]] = {
    "stage3_cache": (
        3,
        {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 1, "cache_features": True, "train_bn": False},
    ),
    "stage2_not_preregistered": (2, ("freeze_unfreeze", 1)),
    "stage3_restore_best": (3, {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": None, "monitor": "loss"}),
    "stage1_phase_scheduler": (1, {**PHASE_SCHEDULER, "preregister_groups": True}),
    "stage2_l2_sp": (2, {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 1, "l2_sp": 0.1}),
    "stage2_auto_rgn": (2, {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 1, "layer_lr": "auto_rgn"}),
}
"""Combinations that must fail before anything trains: the ZeRO stage and the strategy spec."""
LORA_SCENARIOS = {
    "stage2_lora": (2, "lora_deepspeed_unfreeze")
}  # tests/distributed/test_lora_deepspeed.py (needs peft)
SAMPLES = 16  # 2 steps an epoch: DeepSpeed steps are slow on CPU


def main(out: Path, names: list[str]) -> None:
    """The scenarios named, or every scenario, resume and refused combination."""
    out.mkdir(parents=True, exist_ok=True)
    chosen = {**SCENARIOS, **LORA_SCENARIOS}
    for name, (stage, spec) in ((n, chosen[n]) for n in names or SCENARIOS):
        accelerator, strategy = deepspeed_strategy(stage, WORLD)
        monitor = TrainableMonitor(log=False)
        trainer = make_trainer(
            3, accelerator=accelerator, devices=WORLD, strategy=strategy, callbacks=[Dump(out / name), monitor]
        )
        trainer.finetune(Net(), Data(4, samples=SAMPLES), strategy=make_callback(spec))
        engine = type(trainer.strategy.model).__name__
        optimizer = type(trainer.optimizers[0]).__name__
        torch.save({"engine": engine, "optimizer": optimizer}, out / f"{name}.engine.rank{trainer.global_rank}.pt")
        counted = [record.total_params for record in monitor.records]
        torch.save(counted, out / f"{name}.counted.rank{trainer.global_rank}.pt")
    if not names:
        for stage in (2, 3):
            resume_after_unfreeze(out, stage)
        for name, (stage, spec) in ERRORS.items():
            refused(out, name, stage, spec)
    shutdown()


def refused(out: Path, name: str, stage: int, spec: Any) -> None:
    """Run a combination that must fail at setup; write its error."""
    accelerator, strategy = deepspeed_strategy(stage, WORLD)
    trainer = make_trainer(3, accelerator=accelerator, devices=WORLD, strategy=strategy, callbacks=[Dump(out / name)])
    try:
        trainer.finetune(Net(), Data(4, samples=SAMPLES), strategy=resolve_strategy(spec))
    except FinetuningError as error:
        (out / f"{name}.error.rank{trainer.global_rank}.txt").write_text(f"{type(error).__name__}: {error}")


def resume_after_unfreeze(out: Path, stage: int) -> None:
    """3 epochs straight, then the same run resumed from its epoch-1 checkpoint."""
    checkpoints = ModelCheckpoint(dirpath=out / f"ckpts{stage}", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    for name, callbacks, ckpt_path in (
        (f"resume{stage}_full", [checkpoints], None),
        (f"resume{stage}_resumed", [], out / f"ckpts{stage}" / "epoch=1.ckpt"),
    ):
        accelerator, strategy = deepspeed_strategy(stage, WORLD)
        trainer = make_trainer(
            3,
            accelerator=accelerator,
            devices=WORLD,
            strategy=strategy,
            callbacks=[*callbacks, Dump(out / name)],
            enable_checkpointing=bool(callbacks),
        )
        trainer.finetune(
            Net(), Data(4, samples=SAMPLES), strategy=make_callback("freeze_unfreeze_deepspeed"), ckpt_path=ckpt_path
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
