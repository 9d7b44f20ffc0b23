"""Per-rank memory of fine-tuning under DDP and FSDP2, side by side: 2 CPU ranks over gloo.

    python -m benchmarks.memory_bench [--smoke] [--out DIR] [--width 1024] [--depth 16]

Trains a backbone of ``depth`` blocks ``Linear(width, width) + ReLU`` and a head with ``freeze_unfreeze``
(the backbone unfreezes at epoch 1) and AdamW, once under DDP and once under FSDP2
(``ModelParallelStrategy``, every block its own ``fully_shard`` unit, the model built on the meta
device as FSDP2 models that do not fit one device are). Each engine runs in its own launch of 2 ranks,
so that one run's freed memory cannot hide the other's peak. For the frozen epoch and the unfrozen
epoch, every rank reports:

* the bytes of the parameters, gradients and optimizer states it holds (exact, from the tensors; a
  DTensor counts its local shard);
* its peak resident memory (``VmHWM``, reset at the start of each epoch) and that peak above the
  resident memory before the model was built (the Python, torch and Lightning runtime).

The printed table gives each figure for both engines and their ratio, FSDP2 / DDP. ``--out`` writes
``memory.json`` and ``memory.md``. ``--smoke`` runs a tiny model, for the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from benchmarks.measure import proc_status_bytes, release_freed_memory, reset_peak_rss

ENGINES = ("ddp", "fsdp2")
PHASES = ("frozen", "unfrozen")
FIGURES = ("param_bytes", "grad_bytes", "optimizer_state_bytes", "peak_rss_bytes", "peak_above_runtime_bytes")
WORLD, BATCH, STEPS = 2, 16, 4
FULL = {"width": 1024, "depth": 16}
SMOKE = {"width": 64, "depth": 2}


class Model(pl.LightningModule):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])
        self.head = nn.Linear(width, 10)

    def configure_model(self) -> None:
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            mesh = self.trainer.strategy.device_mesh["data_parallel"]
            for block in [*self.backbone, self.head]:
                fully_shard(block, mesh=mesh)
            fully_shard(self, mesh=mesh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.backbone(x)
        logits: torch.Tensor = self.head(features)
        return logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        width = self.head.in_features
        generator = torch.Generator().manual_seed(0)
        n = BATCH * STEPS * WORLD
        data = TensorDataset(
            torch.randn(n, width, generator=generator), torch.randint(0, 10, (n,), generator=generator)
        )
        sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(data, shuffle=False)
        return DataLoader(data, batch_size=BATCH, sampler=sampler)


def local_bytes(tensor: torch.Tensor) -> int:
    """The bytes this rank holds of ``tensor`` (its shard, for a DTensor)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def reset_peak() -> None:
    """Return freed memory to the system and restart the ``VmHWM`` peak from the current resident size."""
    release_freed_memory()
    reset_peak_rss()


class MemoryProbe(pl.Callback):
    """Per epoch: the largest gradient and optimizer-state bytes at any step, parameter bytes, peak RSS."""

    def __init__(self, runtime: int) -> None:
        self.runtime = runtime
        self.phases: dict[str, dict[str, int]] = {}
        self.current: dict[str, int] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reset_peak()  # after the strategy's callback, which runs first, unfroze this epoch's phase
        self.current = {"grad_bytes": 0, "optimizer_state_bytes": 0}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        grads = sum(local_bytes(p.grad) for p in pl_module.parameters() if p.grad is not None)
        self.current["grad_bytes"] = max(self.current["grad_bytes"], grads)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        states = trainer.optimizers[0].state.values()
        held = sum(local_bytes(v) for state in states for v in state.values() if isinstance(v, torch.Tensor))
        self.current["optimizer_state_bytes"] = max(self.current["optimizer_state_bytes"], held)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        peak = proc_status_bytes("VmHWM") or 0
        self.current.update(
            param_bytes=sum(local_bytes(p) for p in pl_module.parameters()),
            peak_rss_bytes=peak,
            peak_above_runtime_bytes=peak - self.runtime,
        )
        self.phases[PHASES[min(trainer.current_epoch, 1)]] = self.current


def worker(engine: str, size: dict[str, int], out: Path) -> None:
    """One engine's run on this rank (Lightning starts the other rank from the same command line)."""
    from finetune_strategies import Trainer

    torch.manual_seed(0)
    strategy: Any = (
        "ddp" if engine == "ddp" else ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1)
    )
    runtime = proc_status_bytes("VmRSS") or 0
    probe = MemoryProbe(runtime)
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=strategy,
        max_epochs=2,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with trainer.init_module(empty_init=engine == "fsdp2"):  # FSDP2 materialises only its shards
        model = Model(**size)
    trainer.finetune(model, strategy=("freeze_unfreeze", 1))
    result = {"engine": engine, "rank": trainer.global_rank, "runtime_rss_bytes": runtime, "phases": probe.phases}
    out.with_name(f"{out.name}.rank{trainer.global_rank}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def launch(engine: str, size: dict[str, int], out: Path, timeout: float) -> list[dict[str, Any]]:
    """Run one engine's launch of :data:`WORLD` ranks; return every rank's report."""
    command = [sys.executable, "-m", "benchmarks.memory_bench", "--engine", engine, "--report", str(out)]
    command += ["--width", str(size["width"]), "--depth", str(size["depth"])]
    # glibc keeps freed heap memory, and after a large free serves even larger tensors from the heap: a
    # fixed mmap threshold gives every tensor of 64 KiB or more its own mapping, returned to the system
    # when the tensor is freed, so that resident memory follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the {engine} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return [json.loads(out.with_name(f"{out.name}.rank{r}.json").read_text()) for r in range(WORLD)]


def mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """A markdown table: per phase and figure, the largest value over ranks for each engine, and the ratio."""
    lines = ["| phase | per rank (MiB) | DDP | FSDP2 | FSDP2 / DDP |", "| --- | --- | --- | --- | --- |"]
    for phase in PHASES:
        for figure in FIGURES:
            ddp, fsdp = (max(rank["phases"][phase][figure] for rank in results[e]) for e in ENGINES)
            ratio = f"{fsdp / ddp:.2f}" if ddp else "-"
            lines.append(
                f"| {phase} | {figure.removesuffix('_bytes').replace('_', ' ')} | {mib(ddp)} | {mib(fsdp)} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, for the test suite")
    parser.add_argument("--out", type=Path, help="write memory.json and memory.md here")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per engine launch")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # one launch's ranks
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = dict(SMOKE if args.smoke else FULL)
    size.update({k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None})
    if args.engine:
        worker(args.engine, size, args.report)
        return 0
    out: Path = args.out or Path("benchmarks") / "results"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {engine: launch(engine, size, out / f"memory_{engine}", args.timeout) for engine in ENGINES}
    params = (size["width"] + 1) * size["width"] * size["depth"] + (size["width"] + 1) * 10
    header = (
        f"Memory per rank, {WORLD} CPU ranks (gloo), freeze_unfreeze with AdamW: backbone {size['depth']} x "
        f"Linear({size['width']}, {size['width']}), {params / 1e6:.2f}M parameters ({mib(params * 4)} MiB fp32)."
    )
    text = f"{header}\n\n{table(results)}\n"
    print(text)
    record = {"smoke": args.smoke, "size": size, "world": WORLD, "parameters": params, "results": results}
    record["seconds"] = round(time.monotonic() - started, 1)
    (out / "memory.json").write_text(json.dumps(record, indent=2))
    (out / "memory.md").write_text(text)
    print(f"wrote {out / 'memory.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
