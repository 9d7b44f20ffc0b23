"""Run ``*_deepspeed`` strategies under the real DeepSpeed engine, ZeRO stage 1 and 2, on 2 ranks.

    python tests/deepspeed_scenarios.py OUTDIR

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

SCENARIOS = {
    "stage1_freeze_unfreeze": (1, "freeze_unfreeze_deepspeed"),
    "stage2_milestones": (2, "unfreeze_milestones_deepspeed"),
}
SAMPLES = 16  # 2 steps an epoch: DeepSpeed steps are slow on CPU


def main(out: Path) -> None:
    for name, (stage, callback) in SCENARIOS.items():
        accelerator, strategy = deepspeed_strategy(stage, WORLD)
        trainer = make_trainer(
            3, accelerator=accelerator, devices=WORLD, strategy=strategy, callbacks=[Dump(out / name)]
        )
        model = Net()
        trainer.finetune(model, Data(4, samples=SAMPLES), strategy=make_callback(callback))
        engine = type(trainer.strategy.model).__name__
        optimizer = type(trainer.optimizers[0]).__name__
        torch.save({"engine": engine, "optimizer": optimizer}, out / f"{name}.engine.rank{trainer.global_rank}.pt")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
