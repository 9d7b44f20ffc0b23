"""What keeping DDP in step with an unfreeze costs: 2 CPU ranks over gloo, one launch.

    python benchmarks/ddp_sync_cost.py

Trains the same backbone + head with ``FreezeUnfreeze(unfreeze_epoch=1)`` under four mechanisms,
one after the other in the same process group, and prints the median step time of the frozen
epoch and of the epochs after the unfreeze, plus the one-off time of the phase change:

* ``none``: no mechanism (what Lightning's ``BaseFinetuning`` does): fast, and wrong.
* ``rewrap``: this library's mechanism (``finetune_strategies.core.distributed``).
* ``allreduce``: all-reduce the unregistered gradients in one flat buffer before each step.
* ``no_freeze``: everything trainable from the start; this is what registering every parameter
  from the start costs while the backbone should be frozen (full backward and all-reduce).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from finetune_strategies import Trainer
from finetune_strategies.core import distributed
from finetune_strategies.core.distributed import trainable_parameter_ids

WIDTH, DEPTH, BATCH, STEPS, EPOCHS, ROUNDS = 512, 4, 32, 16, 3, 3


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(*[nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(DEPTH)])
        self.head = nn.Linear(WIDTH, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(
            torch.randn(BATCH * STEPS * 2, WIDTH, generator=generator),
            torch.randint(0, 10, (BATCH * STEPS * 2,), generator=generator),
        )
        sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(data, shuffle=False)
        return DataLoader(data, batch_size=BATCH, sampler=sampler)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[list[float]] = [[] for _ in range(EPOCHS)]

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.times[trainer.current_epoch].append(time.perf_counter() - self.start)


class AllReduceExtra(pl.Callback):
    """The alternative: all-reduce, as one flat buffer, the grads DDP did not register."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(trainer.strategy.model, DistributedDataParallel)
        self.registered = trainable_parameter_ids(trainer.strategy.model)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        grads = [
            p.grad
            for p in pl_module.parameters()
            if p.requires_grad and p.grad is not None and id(p) not in self.registered
        ]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads]).div_(dist.get_world_size())
            dist.all_reduce(flat)
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()


def run(mechanism: str) -> tuple[list[list[float]], list[float], float]:
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if mechanism == "allreduce":
        callbacks.append(AllReduceExtra())
    original = distributed.sync_ddp
    rewraps: list[float] = []

    def timed_sync(trainer: pl.Trainer, stale: bool = False) -> bool:
        start = time.perf_counter()
        rebuilt = original(trainer, stale=stale)
        if rebuilt:
            rewraps.append(time.perf_counter() - start)
        return rebuilt

    def no_sync(trainer: pl.Trainer, stale: bool = False) -> bool:
        return False

    distributed.sync_ddp = no_sync if mechanism in {"none", "allreduce"} else timed_sync
    try:
        trainer = Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_epochs=EPOCHS,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        model = Model()
        strategy: Any = "no_freeze" if mechanism == "no_freeze" else ("freeze_unfreeze", 1)
        trainer.finetune(model, strategy=strategy)
    finally:
        distributed.sync_ddp = original
    first_block: Any = model.backbone[0]
    weight = first_block[0].weight.detach()
    other = weight.clone()
    dist.broadcast(other, src=1)
    drift = (weight - other).abs().max().item()
    return timer.times, rewraps, drift


def main() -> None:
    mechanisms = ["none", "rewrap", "allreduce", "no_freeze"]
    frozen: dict[str, list[float]] = {m: [] for m in mechanisms}
    unfrozen: dict[str, list[float]] = {m: [] for m in mechanisms}
    rewrap: list[float] = []
    drift: dict[str, float] = {}
    run("rewrap")  # warm-up
    for _ in range(ROUNDS):  # interleaved, so that load from elsewhere hits every mechanism alike
        for mechanism in mechanisms:
            times, rewraps, drift[mechanism] = run(mechanism)
            frozen[mechanism] += times[0][1:]
            unfrozen[mechanism] += [t for epoch in times[1:] for t in epoch[1:]]
            rewrap += rewraps
    if dist.get_rank() == 0:
        print(f"backbone {DEPTH}x Linear({WIDTH}, {WIDTH}), batch {BATCH} per rank, 2 CPU ranks over gloo")
        took = statistics.median(rewrap) * 1e3
        print(f"median of {ROUNDS} interleaved rounds; one re-wrap took {took:.1f} ms")
        print("| mechanism | step, backbone frozen (ms) | step, after the unfreeze (ms) | max rank drift |")
        print("| --- | --- | --- | --- |")
        for m in mechanisms:
            row = f"{statistics.median(frozen[m]) * 1e3:.1f} | {statistics.median(unfrozen[m]) * 1e3:.1f}"
            print(f"| {m} | {row} | {drift[m]:.2e} |")


if __name__ == "__main__":
    main()
