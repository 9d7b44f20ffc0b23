"""Run ``*_deepspeed`` strategies under the real DeepSpeed engine, ZeRO stage 1 and 2, on 2 ranks.

    python tests/deepspeed_scenarios.py OUTDIR [SCENARIO ...]
    python tests/deepspeed_scenarios.py OUTDIR l2_sp_refused   # one rank: L2-SP is refused at setup

With a GPU per rank Lightning's own ``DeepSpeedStrategy`` runs; elsewhere ``CPUDeepSpeedStrategy``
(DeepSpeed's CPU accelerator over gloo; the test sets ``DS_ACCELERATOR=cpu`` then).
Writes ``OUTDIR/<scenario>.rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ddp_helpers import WORLD, Data, Dump, Net, make_callback, make_trainer, shutdown
from deepspeed_cpu import deepspeed_strategy
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune_strategies import ConfigurationError, resolve_strategy

SCENARIOS = {
    "stage1_freeze_unfreeze": (1, "freeze_unfreeze_deepspeed"),
    "stage2_milestones": (2, "unfreeze_milestones_deepspeed"),
}
LORA_SCENARIOS = {"stage2_lora": (2, "lora_deepspeed_unfreeze")}  # tests/test_lora_deepspeed.py (needs peft)
SAMPLES = 16  # 2 steps an epoch: DeepSpeed steps are slow on CPU


def main(out: Path, names: list[str]) -> None:
    if names == ["l2_sp_refused"]:
        l2_sp_refused(out)
    chosen = {**SCENARIOS, **LORA_SCENARIOS}
    for name, (stage, callback) in ((n, chosen[n]) for n in names or SCENARIOS):
        accelerator, strategy = deepspeed_strategy(stage, WORLD)
        trainer = make_trainer(
            3, accelerator=accelerator, devices=WORLD, strategy=strategy, callbacks=[Dump(out / name)]
        )
        model = Net()
        trainer.finetune(model, Data(4, samples=SAMPLES), strategy=make_callback(callback))
        engine = type(trainer.strategy.model).__name__
        optimizer = type(trainer.optimizers[0]).__name__
        torch.save({"engine": engine, "optimizer": optimizer}, out / f"{name}.engine.rank{trainer.global_rank}.pt")
    if not names:
        resume_after_unfreeze(out)
    shutdown()


def resume_after_unfreeze(out: Path) -> None:
    """ZeRO stage 2: 3 epochs straight, then the same run resumed from its epoch-1 checkpoint."""
    checkpoints = ModelCheckpoint(dirpath=out / "ckpts", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    for name, callbacks, ckpt_path in (
        ("resume_full", [checkpoints], None),
        ("resume_resumed", [], out / "ckpts" / "epoch=1.ckpt"),
    ):
        accelerator, strategy = deepspeed_strategy(2, WORLD)
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


def l2_sp_refused(out: Path) -> None:
    """L2-SP under DeepSpeed (one rank, ZeRO stage 2): setup refuses it before anything trains."""
    accelerator, strategy = deepspeed_strategy(2, 1)
    trainer = make_trainer(1, accelerator=accelerator, devices=1, strategy=strategy)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 1, "l2_sp": 0.1}
    try:
        trainer.finetune(model, Data(4, samples=SAMPLES), strategy=resolve_strategy(spec))
        message = ""
    except ConfigurationError as error:
        message = str(error)
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.save({"message": message, "unchanged": unchanged}, out / "l2_sp_refused.pt")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
