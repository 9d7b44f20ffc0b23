"""A soak run for ``test_soak.py``: one fit with many phase changes, measured every epoch.

    python tests/helpers/soak_worker.py OUTDIR {single|ddp} CHANGES

The model's backbone is ``CHANGES`` small Linear layers; ``gradual_unfreeze`` with
``layer_unit="param_modules"`` unfreezes one more of them every epoch from epoch 1, so the fit makes
``CHANGES`` phase changes (then ``SETTLE`` epochs without), each adding a param group that an LR
scheduler learns (and, under DDP over 2 gloo ranks, a new DDP wrapper). After every epoch each rank
records its resident memory (after ``gc.collect()``), how many DDP wrappers are still alive, how
many hooks its parameters carry, its param groups and the time of each training step. Then a fresh fit of the same model
with everything trainable from the start gives the step time to compare the last epochs with.
Each rank writes ``OUTDIR/<mode>.rank<r>.json``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from conftest import TinyClassifier
from ddp_helpers import make_trainer, shutdown
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from finetune_strategies import GradualUnfreeze

BATCHES = 4
BATCH = 8
SETTLE = 3
"""Epochs after the last phase change, whose step time is compared with a fresh fit's."""
WIDTH = 8


class Deep(TinyClassifier):
    """``layers`` small Linear layers as the backbone; SGD with momentum and a StepLR scheduler."""

    def __init__(self, layers: int) -> None:
        super().__init__(lr=0.01, scheduler=lambda optimizer: StepLR(optimizer, 1, gamma=0.999))
        torch.manual_seed(0)
        self.backbone = nn.Sequential(*(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(layers)))
        self.head = nn.Linear(WIDTH, 2)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(BATCHES * BATCH * self.trainer.world_size, WIDTH, generator=generator)
        dataset = TensorDataset(x, (x[:, 0] > 0).long())
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=BATCH, sampler=sampler)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parameter_hooks(module: nn.Module) -> int:
    """Python-visible hooks on parameters: tensor hooks and post-accumulate-grad hooks (what DDP's
    Python side registers); the C++ reducer's hooks go with its DDP wrapper, counted as alive wrappers."""
    return sum(
        len(getattr(p, "_backward_hooks", None) or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        for p in module.parameters()
    )


class Measure(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.wrappers: list[weakref.ref[nn.Module]] = []
        self.started = 0.0
        self.steps: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps.append(time.perf_counter() - self.started)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapper = trainer.strategy.model
        if wrapper is not None and not any(ref() is wrapper for ref in self.wrappers):
            self.wrappers.append(weakref.ref(wrapper))
        del wrapper
        gc.collect()
        optimizer = trainer.optimizers[0]
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "rss": resident_bytes(),
                "wrappers_seen": len(self.wrappers),
                "wrappers_alive": sum(ref() is not None for ref in self.wrappers),
                "hooks": parameter_hooks(pl_module),
                "groups": len(optimizer.param_groups),
                "scheduler_groups": [len(c.scheduler.base_lrs) for c in trainer.lr_scheduler_configs],
                "trainable": sum(p.requires_grad for p in pl_module.parameters()),
                "step_median": statistics.median(self.steps),
            }
        )
        self.steps = []


def fit(changes: int, world: int, strategy: Any, epochs: int, measure: Measure) -> Deep:
    model = Deep(changes)
    trainer = make_trainer(
        epochs,
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        callbacks=[measure],
        limit_train_batches=BATCHES,
        use_distributed_sampler=False,
    )
    trainer.finetune(model, strategy=strategy)
    return model


def main(out: Path, mode: str, changes: int) -> None:
    world = 2 if mode == "ddp" else 1
    torch.set_num_threads(1)
    soak = Measure()
    strategy = GradualUnfreeze(start_epoch=1, every=1, layers_per_step=1, layer_unit="param_modules")
    model = fit(changes, world, strategy, changes + 1 + SETTLE, soak)
    fresh = Measure()  # the same final trainable set, with no phase change behind it
    fit(changes, world, "no_freeze", SETTLE + 1, fresh)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().contiguous().numpy().tobytes())
    result = {"epochs": soak.epochs, "fresh": fresh.epochs, "weights_sha256": digest.hexdigest()}
    (out / f"{mode}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
