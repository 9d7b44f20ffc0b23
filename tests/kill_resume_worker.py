"""A training run to kill with SIGKILL and resume, for ``test_kill_resume.py``.

    python tests/kill_resume_worker.py {single|ddp|fsdp2|plateau} {killed|resume} DIR [KILL_EPOCH]

``killed`` trains with ``ModelCheckpoint(save_last=True)`` and, two batches into epoch ``KILL_EPOCH``
(default 2: after the unfreeze at epoch 1 and its checkpoint), writes ``DIR/ready`` and waits to be
killed. ``plateau`` unfreezes when the validation score plateaus (at the start of epoch 2).
``resume`` resumes that run with ``ckpt_path="last"``, then trains the same run uninterrupted from
scratch in the same launch; both dump weights and optimizer state per rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from ddp_helpers import (
    GLOBAL_BATCH,
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

from finetune_strategies import resolve_strategy

EPOCHS = 4


class WaitToBeKilled(pl.Callback):
    def __init__(self, ready: Path, epoch: int) -> None:
        self.ready = ready
        self.epoch = epoch

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and args[-1] == 1:
            if trainer.is_global_zero:
                self.ready.write_text("ready")
            time.sleep(600)


def run(mode: str, out: Path, name: str, ckpt_path: str | None, *extra: pl.Callback) -> None:
    ddp = mode in {"ddp", "fsdp2"}
    checkpoint = ModelCheckpoint(dirpath=out / f"{name}_ckpt", save_last=True)
    trainer = make_trainer(
        EPOCHS + (mode == "plateau"),
        devices=WORLD if ddp else 1,
        strategy={"ddp": "ddp", "fsdp2": fsdp2()}.get(mode, "auto"),
        enable_checkpointing=True,
        callbacks=[checkpoint, *extra],
        limit_val_batches=1.0 if mode == "plateau" else 0,
    )
    data = Data(GLOBAL_BATCH // WORLD if ddp else GLOBAL_BATCH)
    if mode == "plateau":
        scored = ScoredData(GLOBAL_BATCH)
        trainer.finetune(ScoredNet(), scored, strategy=resolve_strategy(PLATEAU), ckpt_path=ckpt_path)
        return
    if mode == "fsdp2":  # sharded checkpoints (folders); the unfreeze adds a param group
        trainer.finetune(ShardedNet(), data, strategy=make_callback("freeze_unfreeze"), ckpt_path=ckpt_path)
        return
    strategy = make_callback("unfreeze_milestones" if ddp else "freeze_unfreeze")
    trainer.finetune(Net(), data, strategy=strategy, ckpt_path=ckpt_path)


def main(mode: str, action: str, out: Path, kill_epoch: int = 2) -> None:
    if action == "killed":
        run(mode, out, "run", None, WaitToBeKilled(out / "ready", kill_epoch))
        raise SystemExit("the run was not killed")
    run(mode, out, "run", "last", Dump(out / "resumed"))
    run(mode, out, "full", None, Dump(out / "full"))
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), *map(int, sys.argv[4:]))
