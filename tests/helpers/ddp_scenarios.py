"""Run fine-tuning scenarios on 2 CPU processes (DDP over gloo) and dump every rank's state.

    python tests/helpers/ddp_scenarios.py OUTDIR SCENARIO [SCENARIO ...]

Lightning starts rank 1 by running this script again, so one launch runs every scenario: each is
its own ``fit`` in the same process group. Each writes ``OUTDIR/<scenario>.rank<r>.pt``.
The per-rank batch is ``GLOBAL_BATCH / WORLD``, so a single-process run with ``GLOBAL_BATCH``
sees the same samples per step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ddp_helpers import (
    CALLBACKS,
    EPOCHS,
    GLOBAL_BATCH,
    LORA_SPECS,
    PLATEAU,
    WORLD,
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

from finetune_strategies import resolve_strategy
from finetune_strategies.core import distributed

PER_RANK = GLOBAL_BATCH // WORLD


def fit(out: Path, name: str, callback_name: str, strategy: str = "ddp", **kwargs: Any) -> None:
    batch = kwargs.pop("batch_size", PER_RANK)
    trainer = make_trainer(devices=WORLD, strategy=strategy, callbacks=[Dump(out / name)], **kwargs)
    trainer.finetune(Net(), Data(batch), strategy=make_callback(callback_name))


def plateau(out: Path) -> None:
    """The ranks log different validation scores; rank 0's decide, so both unfreeze at the same epoch."""
    callbacks = [Dump(out / "plateau")]
    trainer = make_trainer(4, devices=WORLD, strategy="ddp", callbacks=callbacks, limit_val_batches=1.0)
    trainer.finetune(ScoredNet(), ScoredData(PER_RANK), strategy=resolve_strategy(PLATEAU))


def resume_lora(out: Path, name: str) -> None:
    """LoRA then everything, stopped in the adapter phase with a trainable-only checkpoint and resumed."""
    ckpt_dir = out / f"{name}_ckpt"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    first = make_trainer(1, devices=WORLD, strategy="ddp", enable_checkpointing=True, callbacks=[checkpoint])
    first.finetune(Net(), Data(PER_RANK), strategy=make_callback("lora_unfreeze"))
    second = make_trainer(EPOCHS, devices=WORLD, strategy="ddp", callbacks=[Dump(out / name)])
    second.finetune(Net(), Data(PER_RANK), strategy=make_callback("lora_unfreeze"), ckpt_path=ckpt_dir / "last.ckpt")


def unguarded_saved_copy(out: Path) -> None:
    """The power check for peft #951: the same run, but the unfreeze also thaws the unused originals."""
    from finetune_strategies.strategies import lora

    lora.saved_copy_originals = lambda model: []  # type: ignore[assignment]
    fit(out, "lora_unguarded", "lora_peft_saved_copy")


def resume(out: Path, name: str, sync_on_resume: bool) -> None:
    """Stop after the unfreeze epoch with a checkpoint, then resume in a new fit for the last epoch."""
    ckpt_dir = out / f"{name}_ckpt"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    first = make_trainer(2, devices=WORLD, strategy="ddp", enable_checkpointing=True, callbacks=[checkpoint])
    first.finetune(Net(), Data(PER_RANK), strategy=make_callback("freeze_unfreeze"))
    original = distributed.sync_ddp
    if not sync_on_resume:  # the resumed fit runs without our DDP fix: the test's power check
        distributed.sync_ddp = lambda trainer, stale=False: False  # type: ignore[assignment]
    try:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
        callbacks = [Dump(out / name), checkpoint]
        second = make_trainer(EPOCHS, devices=WORLD, strategy="ddp", enable_checkpointing=True, callbacks=callbacks)
        second.finetune(Net(), Data(PER_RANK), strategy=make_callback("freeze_unfreeze"), ckpt_path="last")
    finally:
        distributed.sync_ddp = original


def compiled(out: Path) -> None:
    """``Net`` compiled in place (aot_eager, see tests/core/test_compiled.py) under ``unfreeze_milestones``; rank 0
    writes the strategy's compile report."""
    from finetune_strategies import FinetuningStrategy
    from finetune_strategies.core.compiled import compile_module

    trainer = make_trainer(devices=WORLD, strategy="ddp", callbacks=[Dump(out / "compiled")])
    strategy = make_callback("unfreeze_milestones")
    assert isinstance(strategy, FinetuningStrategy)
    trainer.finetune(compile_module(Net(), {"backend": "aot_eager"}), Data(PER_RANK), strategy=strategy)
    if trainer.is_global_zero:
        report = strategy.compile_report
        summary = {"recompiles": report.recompiles, "fallbacks": report.fallbacks, "regions": len(report.regions)}
        (out / "compiled.report.json").write_text(json.dumps(summary))


SCENARIOS = {
    **{name: (lambda out, name=name: fit(out, name, name)) for name in CALLBACKS},
    "find_unused": lambda out: fit(out, "find_unused", "freeze_unfreeze", strategy="ddp_find_unused_parameters_true"),
    "accumulate": lambda out: fit(
        out, "accumulate", "freeze_unfreeze", batch_size=PER_RANK // 2, accumulate_grad_batches=2
    ),
    "anchor": lambda out: fit(out, "anchor", "anchor"),
    "plateau": plateau,
    "resume": lambda out: resume(out, "resume", sync_on_resume=True),
    "resume_unsynced": lambda out: resume(out, "resume_unsynced", sync_on_resume=False),
    **{name: (lambda out, name=name: fit(out, name, name)) for name in LORA_SPECS},
    "lora_resume": lambda out: resume_lora(out, "lora_resume"),
    "lora_unguarded": unguarded_saved_copy,
    "compiled": compiled,
}


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    lora = {*LORA_SPECS, "lora_resume", "lora_unguarded"}  # tests/distributed/test_lora_ddp.py runs these (peft)
    apart = {*lora, "compiled"}  # tests/core/test_compiled.py runs "compiled"
    names = [n for n in SCENARIOS if n not in apart] if argv[1:] == ["all"] else argv[1:]
    for name in names:
        SCENARIOS[name](out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
