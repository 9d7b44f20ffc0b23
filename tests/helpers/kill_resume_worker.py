"""A training run to kill with SIGKILL and resume, for ``test_kill_resume.py``.

    python tests/helpers/kill_resume_worker.py {single|ddp|fsdp2|plateau} {killed|resume} DIR [KILL_EPOCH]
    python tests/helpers/kill_resume_worker.py single killed_in_write DIR {safe|in_place}

``killed`` trains with ``ModelCheckpoint(save_last=True)`` and, two batches into epoch ``KILL_EPOCH``
(default 2: after the unfreeze at epoch 1 and its checkpoint), writes ``DIR/ready`` and waits to be
killed. ``plateau`` unfreezes when the validation score plateaus (at the start of epoch 2).
``killed_in_write`` trains the same way, but stalls in the middle of writing epoch 2's ``last.ckpt``
(after 1 MiB of a checkpoint made 32 MiB larger), writes ``DIR/ready`` and waits to be killed; it
writes through the Trainer's default checkpoint IO (``safe``) or through one that writes straight
into the target file (``in_place``, what an IO without atomic writes does).
``resume`` resumes either run with ``ckpt_path="last"``, then trains the same run uninterrupted from
scratch in the same launch; both dump weights and optimizer state per rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import torch
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
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from finetune_strategies import resolve_strategy
from finetune_strategies.checkpointing.checkpoint_io import SafeCheckpointIO

EPOCHS = 4
KILL_EPOCH = 2
STALL_AFTER = 1 << 20


class WaitToBeKilled(pl.Callback):
    def __init__(self, ready: Path, epoch: int = KILL_EPOCH) -> None:
        self.ready = ready
        self.epoch = epoch

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and args[-1] == 1:
            if trainer.is_global_zero:
                self.ready.write_text("ready")
            time.sleep(600)


class StallingFile:
    """A file that writes its first ``STALL_AFTER`` bytes, then writes ``ready`` and waits to be killed."""

    def __init__(self, file: Any, ready: Path) -> None:
        self.file, self.ready, self.written = file, ready, 0

    def write(self, data: bytes) -> int:
        room = STALL_AFTER - self.written
        if len(data) > room:
            self.file.write(memoryview(data)[:room])
            self.file.flush()
            self.ready.write_text("ready")
            time.sleep(600)
        self.written += len(data)
        return int(self.file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


class InPlaceCheckpointIO(TorchCheckpointIO):
    """Writes straight into the target file: a kill during the write destroys the previous checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            torch.save(checkpoint, file)


def stalling(io_class: type[TorchCheckpointIO], ready: Path) -> CheckpointIO:
    """An ``io_class`` that stalls in the middle of writing epoch ``KILL_EPOCH``'s ``last.ckpt``."""

    class Stalling(io_class):  # type: ignore[misc, valid-type]
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            if Path(path).name != "last.ckpt" or checkpoint["epoch"] != KILL_EPOCH:
                super().save_checkpoint(checkpoint, path, storage_options)
                return
            save = torch.save
            checkpoint["ballast"] = torch.zeros(8 << 20)  # 32 MiB: the write is cut long before its end
            with mock.patch.object(torch, "save", lambda obj, file: save(obj, StallingFile(file, ready))):
                super().save_checkpoint(checkpoint, path, storage_options)

    return Stalling()


def run(
    mode: str, out: Path, name: str, ckpt_path: str | None, *extra: pl.Callback, plugins: list[Any] | None = None
) -> None:
    ddp = mode in {"ddp", "fsdp2"}
    checkpoint = ModelCheckpoint(dirpath=out / f"{name}_ckpt", save_last=True)
    trainer = make_trainer(
        EPOCHS + (mode == "plateau"),
        devices=WORLD if ddp else 1,
        strategy=fsdp2() if mode == "fsdp2" else "ddp" if ddp else "auto",  # FSDP2 needs torch >= 2.6
        enable_checkpointing=True,
        callbacks=[checkpoint, *extra],
        plugins=plugins,
        limit_val_batches=1.0 if mode == "plateau" else 0,
    )
    if mode == "plateau":
        scored = ScoredData(GLOBAL_BATCH)
        trainer.finetune(ScoredNet(), scored, strategy=resolve_strategy(PLATEAU), ckpt_path=ckpt_path)
        return
    data = Data(GLOBAL_BATCH // WORLD if ddp else GLOBAL_BATCH)
    if mode == "fsdp2":  # sharded checkpoints (folders); the unfreeze adds a param group
        trainer.finetune(ShardedNet(), data, strategy=make_callback("freeze_unfreeze"), ckpt_path=ckpt_path)
        return
    strategy = make_callback("unfreeze_milestones" if ddp else "freeze_unfreeze")
    trainer.finetune(Net(), data, strategy=strategy, ckpt_path=ckpt_path)


def main(mode: str, action: str, out: Path, extra: str | None = None) -> None:
    if action == "killed":
        run(mode, out, "run", None, WaitToBeKilled(out / "ready", int(extra or KILL_EPOCH)))
        raise SystemExit("the run was not killed")
    if action == "killed_in_write":
        io_class = InPlaceCheckpointIO if extra == "in_place" else SafeCheckpointIO
        run(mode, out, "run", None, plugins=[stalling(io_class, out / "ready")])
        raise SystemExit("the run was not killed")
    run(mode, out, "run", "last", Dump(out / "resumed"))
    run(mode, out, "full", None, Dump(out / "full"))
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), *sys.argv[4:])
