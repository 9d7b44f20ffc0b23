"""Text-task runs in processes of their own, for ``tests/text/test_text_distributed.py``.

    python tests/helpers/text_worker.py ddp DIR       # 2 ranks (DDP over gloo): gradual_unfreeze + layer_lr_decay
    python tests/helpers/text_worker.py killed DIR    # one process, waits to be killed in epoch KILL_EPOCH
    python tests/helpers/text_worker.py resume DIR    # resumes that run from last.ckpt, then runs it whole

Every run dumps each rank's weights after every epoch (:class:`ddp_helpers.Dump`); the DDP run also writes
each rank's tokenizer vocabulary, which every rank builds from the training texts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from ddp_helpers import WORLD, Dump, make_trainer, shutdown
from kill_resume_worker import WaitToBeKilled
from lightning.pytorch.callbacks import ModelCheckpoint
from text_helpers import make_classifier, make_data, strategy

EPOCHS = 4
KILL_EPOCH = 2
SPEC = strategy("gradual_unfreeze", start_epoch=1, layer_lr_decay=0.5)


class Vocabulary(pl.Callback):
    """Writes the data module's tokenizer vocabulary, per rank, when the fit starts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        vocabulary = trainer.datamodule.tokenizer.get_vocab()  # type: ignore[attr-defined]
        self.path.with_name(f"{self.path.name}.rank{trainer.global_rank}.json").write_text(json.dumps(vocabulary))


def fit(out: Path, name: str, *callbacks: pl.Callback, ckpt_path: str | None = None, **trainer: Any) -> None:
    """One process: :data:`EPOCHS` epochs of :data:`SPEC`, dumped as ``name``."""
    run = make_trainer(EPOCHS, callbacks=[Dump(out / name), *callbacks], **trainer)
    run.finetune(make_classifier(), make_data(), strategy=SPEC, ckpt_path=ckpt_path)


def main(mode: str, out: Path) -> None:
    if mode == "ddp":  # 4 texts per rank and step: the global batch of 8
        callbacks = [Dump(out / "ddp"), Vocabulary(out / "vocab")]
        trainer = make_trainer(EPOCHS + 1, devices=WORLD, strategy="ddp", callbacks=callbacks)
        trainer.finetune(make_classifier(), make_data(batch_size=4), strategy=SPEC)
        shutdown()
        return
    checkpoint = ModelCheckpoint(dirpath=out / "ckpt", save_last=True)
    if mode == "killed":
        ready = out / "ready"
        fit(out, "killed", checkpoint, WaitToBeKilled(ready, KILL_EPOCH), enable_checkpointing=True)
        raise SystemExit("the run was not killed")
    fit(out, "resumed", ckpt_path=str(out / "ckpt" / "last.ckpt"))
    fit(out, "full")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
