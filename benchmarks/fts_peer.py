"""finetuning-scheduler (FTS) as a measured peer: the same two-phase schedule as ``freeze_unfreeze``.

    python -m benchmarks.fts_peer --out results/          # the speed suite's workload, 2 gloo ranks
    python -m benchmarks.fts_peer --out results/ --smoke  # tiny sizes, every code path, seconds

The head alone in epoch 0, the backbone from epoch 1 at ``LR`` (group 0's lr / 10, ours' default), no
validation. FTS (``pip install 'finetune-strategies[peers]'``) gets an explicit schedule ended by epoch only
(``epoch_transitions_only=True, restore_best=False``; phase 0 ``head\\..*``, phase 1 the backbone's parameters
outside BatchNorm by name, :func:`backbone_without_batchnorm`) and the ``FTSCheckpoint`` it insists on, told to
keep nothing; ours is ``resolve_strategy(("freeze_unfreeze", 1), train_bn=False, lr=LR)``. Both train the same
parameters in every epoch and let BatchNorm update its running statistics. Three measurements:

* **Step time per phase, paired**: both fits in one lockstep ring (:mod:`benchmarks.lockstep`), timed as in
  the speed suite (:class:`benchmarks.training.StepClock`), rounds alternating which goes first; the median of
  the pair ratios FTS / ours with the speed suite's interval (:func:`benchmarks.stats.median_interval`).
* **Optimizer-state bytes** after the unfreeze.
* **Cross-rank weights under DDP**: 2 CPU ranks (gloo), a small MLP, the backbone unfrozen at epoch 1 of 3 at
  lr 0.05; after every epoch, the largest absolute difference of the backbone's (and the head's) weights
  between the ranks (``python -m benchmarks.fts_peer ddp --out DIR`` runs this part alone).

Writes ``fts_peer.json`` and ``fts_peer.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.config import SMOKE, BenchConfig
from benchmarks.lockstep import HandOver, run_ring
from benchmarks.measure import Instruments
from benchmarks.results import PhaseRecord
from benchmarks.stats import median_interval
from benchmarks.training import fit_timed, quiet_lightning, trainer_options
from benchmarks.workload import BenchModel
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


def peer_callbacks(peer: str, model: nn.Module, backbone_lr: float, root: Path, epochs: int) -> list[Callback]:
    """The fine-tuning callbacks of ``peer``: ours, or FTS (transitions by epoch only, so its last phase needs
    an end epoch too: the fit's ``epochs``) with the checkpoint callback it insists on, keeping nothing."""
    if peer == "ours":
        return [resolve_strategy(("freeze_unfreeze", UNFREEZE_EPOCH), train_bn=False, lr=backbone_lr)]
    from finetuning_scheduler import FinetuningScheduler, FTSCheckpoint

    schedule = {
        0: {"params": [r"head\..*"], "max_transition_epoch": UNFREEZE_EPOCH},
        1: {"params": backbone_without_batchnorm(model), "lr": backbone_lr, "max_transition_epoch": epochs},
    }
    fts: Callback = FinetuningScheduler(  # typed here: FTS may be absent where mypy runs
        ft_schedule=schedule, epoch_transitions_only=True, restore_best=False, log_dir=str(root)
    )
    checkpoint: Callback = FTSCheckpoint(dirpath=str(root), save_top_k=0, save_last=False)
    return [fts, checkpoint]


def peer_options(peer: str, root: Path) -> dict[str, Any]:
    """Trainer options of a peer's fit: no validation; checkpointing on for FTS, which requires its callback."""
    return {"enable_checkpointing": peer == "fts", "limit_val_batches": 0, "default_root_dir": str(root)}


def fit_peer(peer: str, config: BenchConfig, tools: Instruments, hand_over: HandOver, root: Path) -> list[PhaseRecord]:
    """One fit of ``peer`` in a lockstep ring, timed as the speed suite's fits are; its phases."""
    phases = [PhaseRecord(phase, None, 1.0) for phase in PHASES]
    model = BenchModel(config)
    callbacks = peer_callbacks(peer, model, config.lr / 10, root / peer, len(PHASES))
    options = peer_options(peer, root / peer)
    fit_timed(config, tools, callbacks, phases, hand_over=hand_over, model=model, shuffle=True, **options)
    return phases


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
        "fts_ms": 1e3 * statistics.median([t for r in fts for t in r]),
        "ours_ms": 1e3 * statistics.median([t for r in ours for t in r]),
    }


def measure_speed(config: BenchConfig) -> dict[str, Any]:
    """Paired step times per phase, trainable parameters per epoch and optimizer state, FTS vs ours."""
    quiet_lightning()
    if config.threads:
        torch.set_num_threads(config.threads)
    tools = Instruments.for_device(torch.device("cpu"))
    rounds: list[dict[str, list[PhaseRecord]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(config.rounds):
            order = PEERS if round_index % 2 == 0 else PEERS[::-1]
            records = run_ring(order, lambda peer, hand_over: fit_peer(peer, config, tools, hand_over, Path(tmp)))
            rounds.append(records)

    def steps(peer: str, phase: int) -> list[list[float]]:
        return [[sample.step_s for sample in r[peer][phase].samples] for r in rounds]

    last = rounds[-1]
    return {
        "phases": {phase: paired_ratio(steps("fts", i), steps("ours", i)) for i, phase in enumerate(PHASES)},
        "trainable": {peer: [phase.trainable_params for phase in last[peer]] for peer in PEERS},
        "optimizer": {peer: _optimizer_json(last[peer][-1]) for peer in PEERS},
    }


def _optimizer_json(phase: PhaseRecord) -> dict[str, int]:
    state = phase.optimizer
    assert state is not None, "recorded at the end of every epoch"
    return {
        "bytes": state.total_bytes,
        "frozen_bytes": state.frozen_bytes,
        "param_groups": state.param_groups,
        "params": state.params,
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
            diff, model, root = RankDiff(), DdpNet(), Path(tmp) / peer
            callbacks = [*peer_callbacks(peer, model, DDP_LR, root, DDP_EPOCHS), diff]
            options = {"devices": DDP_WORLD, "strategy": "ddp", **peer_options(peer, root)}
            trainer = pl.Trainer(**trainer_options(torch.device("cpu"), DDP_EPOCHS, callbacks, **options))
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
