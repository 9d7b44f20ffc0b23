"""finetuning-scheduler (FTS) as a measured peer: the same two-phase schedule as ``freeze_unfreeze``.

    python -m benchmarks.fts_peer --out results/          # the speed suite's workload, 2 gloo ranks
    python -m benchmarks.fts_peer --out results/ --smoke  # tiny sizes, every code path, seconds

The schedule: the head alone in epoch 0, the whole backbone from epoch 1, no validation loop. FTS
(``pip install 'finetune-strategies[peers]'``) gets it as an explicit schedule, ended by epoch only::

    FinetuningScheduler(ft_schedule={0: {"params": ["head\\..*"], "max_transition_epoch": 1},
                                     1: {"params": BACKBONE_NON_BN, "lr": LR, "max_transition_epoch": EPOCHS}},
                        epoch_transitions_only=True, restore_best=False)
    FTSCheckpoint(dirpath=TMP, save_top_k=0, save_last=False)  # FTS requires one; nothing to restore

and ours is ``resolve_strategy(("freeze_unfreeze", 1), train_bn=False, lr=LR)``. ``BACKBONE_NON_BN`` lists
the backbone's parameters outside BatchNorm layers by name (:func:`backbone_without_batchnorm`), the
set ours unfreezes with ``train_bn=False``, so both train the same parameters in every epoch. In both,
BatchNorm stays in train mode and updates its running statistics (FTS's default
``frozen_bn_track_running_stats``; our default ``bn_eval=False``). ``LR`` is group 0's lr / 10, ours'
default for an unfrozen group. Three measurements:

* **Step time per phase, paired.** Both trainings run in one process, each in its own thread,
  taking turns after every step (:class:`~benchmarks.lockstep.Lockstep`), so the k-th step of one is
  measured next to the k-th step of the other under the same machine load; the rounds alternate
  which goes first. Per phase: the median of the per-pair ratios FTS / ours with the speed suite's
  95% interval (:func:`~benchmarks.stats.median_interval`: rounds, then pairs, resampled). The window of a
  step is the one of the speed suite (first callback's ``on_train_batch_start`` to the last's
  ``on_train_batch_end``), on the workload of :mod:`benchmarks.workload`.
* **Optimizer-state bytes** after the unfreeze (at the end of fit): the tensors in ``optimizer.state``.
* **Cross-rank weights under DDP**: 2 CPU ranks (gloo), a small MLP, the backbone unfrozen at epoch
  1 of 3 at lr 0.05; after every epoch, the largest absolute difference of the backbone's (and the
  head's) weights between the ranks. Launched as ``python -m benchmarks.fts_peer ddp --out DIR``.

Writes ``fts_peer.json`` and ``fts_peer.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.config import SMOKE, BenchConfig
from benchmarks.lockstep import Lockstep
from benchmarks.measure import OptimizerState
from benchmarks.stats import median_interval
from benchmarks.training import quiet_lightning
from benchmarks.workload import BenchModel, make_loader
from finetune_strategies import resolve_strategy

PEERS = ("ours", "fts")
PHASES = ("frozen", "unfrozen")
UNFREEZE_EPOCH = 1
FULL = replace(BenchConfig(), warmup=2, steps=12, rounds=4, device="cpu")
"""The speed suite's workload (resnet18, 96 px, batch 32, AdamW), 12 measured steps a phase, 4 rounds."""
DDP_EPOCHS, DDP_LR, DDP_WORLD = 3, 0.05, 2


def fts_version() -> str | None:
    """The installed finetuning-scheduler's version, or None when it is not installed."""
    try:
        from finetuning_scheduler import __version__
    except ImportError:
        return None
    return str(__version__)


def backbone_without_batchnorm(model: nn.Module) -> list[str]:
    """The names of the backbone's parameters outside BatchNorm layers: what ``freeze_unfreeze`` with
    ``train_bn=False`` unfreezes."""
    return [
        f"backbone.{module_name}.{name}".replace("..", ".")
        for module_name, module in model.get_submodule("backbone").named_modules()
        if not isinstance(module, _BatchNorm)
        for name, _ in module.named_parameters(recurse=False)
    ]


def fts_callback(model: nn.Module, backbone_lr: float, root: Path, epochs: int) -> Callback:
    """FTS with the two-phase schedule, transitions by epoch only (so the last phase needs an epoch too:
    the run's ``epochs``), no checkpoint restored between phases."""
    from finetuning_scheduler import FinetuningScheduler

    schedule = {
        0: {"params": [r"head\..*"], "max_transition_epoch": UNFREEZE_EPOCH},
        1: {"params": backbone_without_batchnorm(model), "lr": backbone_lr, "max_transition_epoch": epochs},
    }
    fts: Callback = FinetuningScheduler(  # typed here: FTS may be absent where mypy runs
        ft_schedule=schedule, epoch_transitions_only=True, restore_best=False, log_dir=str(root)
    )
    return fts


def fts_checkpoint(root: Path) -> Callback:
    """The checkpoint callback FTS insists on, told to keep nothing (there is nothing to restore)."""
    from finetuning_scheduler import FTSCheckpoint

    checkpoint: Callback = FTSCheckpoint(dirpath=str(root), save_top_k=0, save_last=False)
    return checkpoint


def ours_callback(backbone_lr: float) -> Callback:
    """Our ``freeze_unfreeze`` with the same schedule and BatchNorm handling as the FTS run."""
    return resolve_strategy(("freeze_unfreeze", UNFREEZE_EPOCH), train_bn=False, lr=backbone_lr)


def peer_trainer(
    peer: str, model: nn.Module, backbone_lr: float, root: Path, callbacks: Sequence[Callback], **options: Any
) -> pl.Trainer:
    """A Trainer for ``peer`` ("ours" or "fts") with its fine-tuning callback(s) for ``model`` after
    ``callbacks[:-1]`` and before ``callbacks[-1]``; no logger, progress bar or validation."""
    options = {"max_epochs": len(PHASES), **options}
    tuning: list[Callback] = [ours_callback(backbone_lr)]
    if peer == "fts":
        tuning = [fts_callback(model, backbone_lr, root, options["max_epochs"]), fts_checkpoint(root)]
    return pl.Trainer(
        accelerator="cpu",
        callbacks=[*callbacks[:-1], *tuning, *callbacks[-1:]],
        logger=False,
        enable_checkpointing=peer == "fts",  # FTS requires its FTSCheckpoint
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
        **options,
    )


@dataclass
class PeerRun:
    """One training's record: step seconds per phase, trainable parameters per epoch, optimizer state."""

    steps: dict[str, list[float]] = field(default_factory=lambda: {phase: [] for phase in PHASES})
    trainable: list[int] = field(default_factory=list)
    optimizer: dict[str, int] = field(default_factory=dict)


class _ClockStart(Callback):
    def __init__(self) -> None:
        self.started = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.started = time.perf_counter()


class _ClockStop(Callback):
    """Stops the clock after every other callback's hooks, records, then hands the turn over."""

    def __init__(self, start: _ClockStart, record: PeerRun, warmup: int, hand_over: Callable[[], None]) -> None:
        self.start = start
        self.record = record
        self.warmup = warmup
        self.hand_over = hand_over

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:  # after every strategy's epoch-start hooks: what trains in this phase
            self.record.trainable.append(sum(p.numel() for p in pl_module.parameters() if p.requires_grad))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seconds = time.perf_counter() - self.start.started
        if batch_idx >= self.warmup:
            self.record.steps[PHASES[trainer.current_epoch]].append(seconds)
        self.hand_over()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = OptimizerState.of(trainer.optimizers[0])
        self.record.optimizer = {
            "bytes": state.total_bytes,
            "frozen_bytes": state.frozen_bytes,
            "param_groups": state.param_groups,
            "params": state.params,
        }


def _speed_body(peer: str, config: BenchConfig, record: PeerRun, root: Path) -> Callable[[Callable[[], None]], None]:
    def body(hand_over: Callable[[], None]) -> None:
        model = BenchModel(config)
        start = _ClockStart()
        stop = _ClockStop(start, record, config.warmup, hand_over)
        trainer = peer_trainer(peer, model, config.lr / 10, root / peer, [start, stop], devices=1)
        trainer.fit(model, make_loader(config, config.steps_per_epoch, shuffle=True))

    return body


def paired_ratio(fts: Sequence[Sequence[float]], ours: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Per round, the step pairs' ratios fts / ours; their median and its interval
    (:func:`benchmarks.stats.median_interval`: rounds, then pairs within them, resampled)."""
    rounds = [[f / o for f, o in zip(a, b, strict=True)] for a, b in zip(fts, ours, strict=True)]
    interval = median_interval(rounds)
    return {
        "pairs": interval.pairs,
        "ratio": interval.median,
        "low": interval.low,
        "high": interval.high,
        "fts_ms": 1e3 * float(np.median([t for r in fts for t in r])),
        "ours_ms": 1e3 * float(np.median([t for r in ours for t in r])),
    }


def measure_speed(config: BenchConfig) -> dict[str, Any]:
    """Paired step times per phase, trainable parameters per epoch and optimizer state, FTS vs ours."""
    quiet_lightning()
    if config.threads:
        torch.set_num_threads(config.threads)
    rounds: list[dict[str, PeerRun]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(config.rounds):
            order = PEERS if round_index % 2 == 0 else PEERS[::-1]
            records = {peer: PeerRun() for peer in PEERS}
            Lockstep(len(order)).run([_speed_body(peer, config, records[peer], Path(tmp)) for peer in order])
            rounds.append(records)
    last = rounds[-1]
    return {
        "phases": {
            phase: paired_ratio([r["fts"].steps[phase] for r in rounds], [r["ours"].steps[phase] for r in rounds])
            for phase in PHASES
        },
        "trainable": {peer: last[peer].trainable for peer in PEERS},
        "optimizer": {peer: last[peer].optimizer for peer in PEERS},
    }


class DdpNet(pl.LightningModule):
    """A small MLP without normalisation layers: every difference between ranks is a missed all-reduce."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


class RankDiff(Callback):
    """After every epoch: the largest absolute difference between the ranks, per top-level module."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        diffs = {}
        for name in ("backbone", "head"):
            module: nn.Module = getattr(pl_module, name)
            flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flat)
            diffs[name] = max(float((g - gathered[0]).abs().max()) for g in gathered)
        self.epochs.append(diffs)


def measure_ddp(out: Path, samples: int = 128, batch: int = 8) -> None:
    """Each peer on 2 gloo ranks (this process is rank 0 or a rank Lightning launched); rank 0 writes
    ``fts_peer_ddp.json`` to ``out``."""
    quiet_lightning()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=generator)
    data = TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long())
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for peer in PEERS:
            diff = RankDiff()
            options = {"devices": DDP_WORLD, "strategy": "ddp", "max_epochs": DDP_EPOCHS}
            model = DdpNet()
            trainer = peer_trainer(peer, model, DDP_LR, Path(tmp) / peer, [diff], **options)
            trainer.fit(model, DataLoader(data, batch_size=batch, shuffle=True))
            result[peer] = diff.epochs
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fts_peer_ddp.json").write_text(json.dumps(result, indent=2))


def launch_ddp(out: Path, timeout: float = 600) -> dict[str, Any]:
    """Run :func:`measure_ddp` in a fresh process (Lightning launches the second rank); its result."""
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK"}}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "benchmarks.fts_peer", "ddp", "--out", str(out)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the DDP run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "fts_peer_ddp.json").read_text())  # type: ignore[no-any-return]


def markdown(payload: dict[str, Any]) -> str:
    speed, ddp, config = payload["speed"], payload["ddp"], payload["config"]
    lines = [
        "| phase | FTS / ours step time (median of pairs) | 95% interval | FTS ms | ours ms | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for phase, r in speed["phases"].items():
        lines.append(
            f"| {phase} | {r['ratio']:.3f} | {r['low']:.3f} to {r['high']:.3f} "
            f"| {r['fts_ms']:.1f} | {r['ours_ms']:.1f} | {r['pairs']} |"
        )
    opt = speed["optimizer"]
    lines += [
        "",
        "| | FTS | ours |",
        "|---|---|---|",
        f"| optimizer-state bytes after the unfreeze | {opt['fts']['bytes']:,} | {opt['ours']['bytes']:,} |",
        f"| param groups | {opt['fts']['param_groups']} | {opt['ours']['param_groups']} |",
        f"| trainable parameters per epoch | {speed['trainable']['fts']} | {speed['trainable']['ours']} |",
    ]
    for epoch in range(DDP_EPOCHS):
        lines.append(
            f"| 2 gloo ranks, max abs backbone (head) weight diff after epoch {epoch} "
            f"| {ddp['fts'][epoch]['backbone']:.4g} ({ddp['fts'][epoch]['head']:.3g}) "
            f"| {ddp['ours'][epoch]['backbone']:.4g} ({ddp['ours'][epoch]['head']:.3g}) |"
        )
    lines += [
        "",
        f"finetuning-scheduler {payload['fts_version']}; {config['model']} at {config['image_size']} px, batch "
        f"{config['batch_size']}, AdamW lr {config['lr']:g} (backbone lr {config['lr'] / 10:g} from epoch 1), "
        f"{config['threads']} threads; {config['steps']} measured steps per phase after {config['warmup']} "
        f"warm-up, {config['rounds']} rounds, steps interleaved. DDP: MLP, SGD, backbone at lr {DDP_LR:g} "
        f"from epoch {UNFREEZE_EPOCH} of {DDP_EPOCHS}.",
    ]
    return "\n".join(lines) + "\n"


def run_fts_peer(out: Path, smoke: bool) -> dict[str, Any]:
    """Run the three measurements, write ``fts_peer.json`` and ``fts_peer.md``; return the JSON payload."""
    version = fts_version()
    if version is None:
        raise RuntimeError("finetuning-scheduler is not installed: pip install 'finetune-strategies[peers]'.")
    config = replace(SMOKE, steps=2, rounds=2, max_rounds=2, device="cpu") if smoke else FULL
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "fts_version": version,
        "config": asdict(config),
        "speed": measure_speed(config),
        "ddp": launch_ddp(out),
    }
    (out / "fts_peer.json").write_text(json.dumps(payload, indent=2))
    (out / "fts_peer.md").write_text(markdown(payload))
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("all", "ddp"), default="all", help="ddp: the 2-rank part alone")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every code path, numbers meaningless")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == "ddp":
        measure_ddp(args.out)
        return 0
    run_fts_peer(args.out, args.smoke)
    print((args.out / "fts_peer.md").read_text())
    print(f"wrote {args.out / 'fts_peer.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
