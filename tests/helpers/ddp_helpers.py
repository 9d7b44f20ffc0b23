"""Shared by the DDP and kill/resume tests and by the scripts they launch (which run as ``__main__``).

The model has no BatchNorm: without SyncBatchNorm (CUDA only) each rank normalises with its own
batch statistics, so a DDP run could never match a single-process run. Its buffer ``seen`` counts
training samples per rank, so that buffers are compared too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_TRAINER
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from finetune_strategies import FinetuningStrategy, Trainer, resolve_strategy
from finetune_strategies.core.distributed import is_shard

EPOCHS = 3
SAMPLES = 32
GLOBAL_BATCH = 8
WORLD = 2
FSDP1_PREFIX = "_fsdp_wrapped_module."


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen += len(x)
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)


def data(n: int = SAMPLES) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] - x[:, 2] > 0).long()
    return TensorDataset(x, y)


class Data(pl.LightningDataModule):
    """The samples in order. Under DDP rank ``r`` takes samples ``r, r + WORLD, ...`` (Lightning's own
    training sampler would shuffle), so a global step sees the same samples as a single process."""

    def __init__(self, batch_size: int, samples: int = SAMPLES) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.samples = samples

    def train_dataloader(self) -> DataLoader:
        dataset = data(self.samples)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)


class ScoredData(Data):
    """:class:`Data` with the same samples for validation."""

    def val_dataloader(self) -> DataLoader:
        return self.train_dataloader()


SCORES = {0: [1.0, 1.1, 0.9, 0.8, 0.7, 0.6], 1: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]}
"""Per rank, the ``val_score`` of each epoch: rank 0 plateaus after epoch 1 (patience 1), rank 1 never."""


class ScoredNet(Net):
    """Logs ``val_score`` from :data:`SCORES`, per rank and without ``sync_dist``: the ranks disagree."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        score = SCORES[self.trainer.global_rank][self.current_epoch]
        self.log("val_score", torch.tensor(score))


PLATEAU = {"strategy": "freeze_unfreeze", "unfreeze_epoch": None, "monitor": "val_score", "patience": 1}
"""Unfreeze when ``val_score`` plateaus: at the start of epoch 2 on rank 0's scores."""


class UserStrategy(FinetuningStrategy):
    """A user subclass built on the documented helpers: the last layer at epoch 1, the rest at 2."""

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        backbone = pl_module.backbone
        if epoch == 1:
            self.unfreeze_and_add_param_group(backbone[3], optimizer)
        elif epoch == 2:
            self.unfreeze_and_add_param_group(backbone[:3], optimizer, lr=0.02)


class LightningAnchor(BaseFinetuning):
    """Plain Lightning ``BaseFinetuning``: the same schedule as ``FreezeUnfreeze(1)``."""

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer)


SCHEDULES: dict[str, Any] = {
    "gradual_decay": {"strategy": "gradual_unfreeze", "start_epoch": 1, "layers_per_step": 2, "layer_lr_decay": 0.5},
    "phases_decay": {
        "strategy": "phases",
        "phases": [{"epoch": 1, "modules": ["backbone.3"]}, {"epoch": 2, "layer_lr_decay": 0.5}],
    },
    "no_freeze_decay": {"strategy": "no_freeze", "layer_lr_decay": 0.5},
    "deepspeed_decay": {"strategy": "freeze_unfreeze_deepspeed", "unfreeze_epoch": 1, "layer_lr_decay": 0.5},
    "l2_sp": {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "l2_sp": 0.5, "l2_sp_beta": 0.1},
    "auto_rgn": {"strategy": "gradual_unfreeze", "start_epoch": 1, "layers_per_step": 2, "layer_lr": "auto_rgn"},
}
"""Schedules as data (with layer-wise lr decay, L2-SP, or Auto-RGN), run by name like the other scenarios."""
CALLBACKS = [
    "no_freeze",
    "freeze",
    "freeze_unfreeze",
    "unfreeze_milestones",
    "freeze_unfreeze_deepspeed",
    "unfreeze_milestones_deepspeed",
    "user_subclass",
    *SCHEDULES,
]
"""The callbacks of :func:`make_callback` that every engine's tests run: each built-in, both pre-registered
(``*_deepspeed``) forms, a user subclass, and schedules as data with layer-wise lr decay, L2-SP or
Auto-RGN."""
PHASE_SCHEDULER: dict[str, Any] = {
    "strategy": "phases",
    "phases": [
        {
            "epoch": 1,
            "lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
            "reset_optimizer_state": True,
        }
    ],
}
"""A phase with its own LR scheduler that also resets the optimizer state."""


def make_callback(name: str) -> BaseFinetuning:
    """The fine-tuning callback of a scenario."""
    if name in SCHEDULES:
        return resolve_strategy(SCHEDULES[name])
    if name == "anchor":
        return LightningAnchor()
    if name == "user_subclass":
        return UserStrategy()
    if name in {"freeze_unfreeze", "freeze_unfreeze_deepspeed"}:
        return resolve_strategy((name, 1))
    if name in {"unfreeze_milestones", "unfreeze_milestones_deepspeed"}:
        return resolve_strategy((name, ((1, 2), 1)))
    if name in {"surgical", "surgical_deepspeed"}:
        return resolve_strategy((name, {"layers": -1}))
    if name in LORA_SPECS:
        return resolve_strategy(LORA_SPECS[name]())
    return resolve_strategy(name)


def _peft_saved_copy() -> dict[str, Any]:
    from peft import LoraConfig  # peft's own modules_to_save: a trained copy beside an unused original

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["3"], modules_to_save=["0"])
    return {"strategy": "lora", "peft_config": config, "unfreeze_epoch": 1}


LORA_SPECS: dict[str, Any] = {
    "lora": lambda: {"strategy": "lora", "r": 2},
    "lora_unfreeze": lambda: {"strategy": "lora", "r": 2, "unfreeze_epoch": 1, "modules_to_save": "backbone.1"},
    "lora_dora_unfreeze": lambda: {"strategy": "lora", "r": 2, "use_dora": True, "unfreeze_epoch": 1},
    "lora_deepspeed_unfreeze": lambda: {"strategy": "lora_deepspeed", "r": 2, "unfreeze_epoch": 1},
    "lora_peft_saved_copy": _peft_saved_copy,
}
"""LoRA scenarios: adapters only; LoRA then everything (with our in-place modules_to_save, DoRA, the
pre-registered groups of the DeepSpeed variant); peft's modules_to_save wrappers (peft issue #951)."""


def make_trainer(max_epochs: int = EPOCHS, **kwargs: Any) -> Trainer:
    return Trainer(max_epochs=max_epochs, **{**QUIET_TRAINER, "limit_val_batches": 0, **kwargs})


class ShardedNet(Net):
    """:class:`Net` under FSDP2 (``ModelParallelStrategy``): every layer with parameters is its own
    ``fully_shard`` unit, then the whole model, as Lightning's docs apply it in ``configure_model``."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6 (see NEEDS_FSDP2)

        mesh = self.device_mesh["data_parallel"]
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                fully_shard(module, mesh=mesh)
        fully_shard(self, mesh=mesh)


NEEDS_FSDP2 = pytest.mark.skipif(
    not hasattr(torch.distributed.fsdp, "fully_shard"),
    reason="FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6",
)


def fsdp2(**kwargs: Any) -> ModelParallelStrategy:
    """FSDP2 over the :data:`WORLD` ranks: data parallel only (no tensor parallelism)."""
    return ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1, **kwargs)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy of the whole tensor: a DTensor (FSDP2) is gathered from every rank (a collective)."""
    if is_shard(tensor):
        tensor = tensor.full_tensor()  # type: ignore[attr-defined]
    return tensor.detach().clone()


def clean(name: str) -> str:
    """A parameter's name as the LightningModule defines it: without FSDP1's wrapper modules."""
    return name.replace(FSDP1_PREFIX, "")


def full_state(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, whole, on every rank: FSDP2's shards, FSDP1's flat shards and ZeRO-3's
    partitions gathered (collectives: every rank calls it)."""
    if isinstance(trainer.strategy, FSDPStrategy):
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
            named = [*pl_module.named_parameters(), *pl_module.named_buffers()]
            return {clean(k): v.detach().clone() for k, v in named}
    gather: Any = contextlib.nullcontext()
    if getattr(trainer.strategy, "zero_stage_3", False):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(pl_module.parameters()))
    with gather:
        return {k: full(v) for k, v in pl_module.state_dict().items()}


def full_optimizer_state(trainer: pl.Trainer) -> dict[str, Any]:
    """The optimizer's state dict; under FSDP keyed by parameter name with whole tensors (a collective)."""
    optimizer = trainer.optimizers[0]
    if isinstance(trainer.strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        return dict(get_optimizer_state_dict(trainer.strategy.model, optimizer, options=options))
    if isinstance(trainer.strategy, FSDPStrategy):
        state = FullyShardedDataParallel.optim_state_dict(trainer.strategy.model, optimizer)
        return {**state, "state": {clean(k): v for k, v in state["state"].items()}}
    return optimizer.state_dict()


class Dump(pl.Callback):
    """Each epoch: a copy of every parameter and buffer, and which parameters got a gradient and have
    optimizer state; at the end, the optimizer state too. Sharded engines are gathered (:func:`full_state`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.initial: dict[str, torch.Tensor] = {}
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, tuple[int, int]]] = []
        self.optimizer_state: list[list[str]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = full_state(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(full_state(trainer, pl_module))
        # (local, whole) element counts of every gradient the epoch's last backward left
        named = [(clean(n), p) for n, p in pl_module.named_parameters()]
        self.grads.append({n: local_and_whole(p.grad) for n, p in named if p.grad is not None})
        names = {id(p): n for n, p in named}
        self.optimizer_state.append(sorted(names[id(p)] for p in trainer.optimizers[0].state if id(p) in names))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "initial": self.initial,
            "epochs": self.epochs,
            "grads": self.grads,
            "optimizer_state": self.optimizer_state,
            "final": full_state(trainer, pl_module),
            "optimizer": full_optimizer_state(trainer),
            "groups": [(g.get("name"), g["lr"], len(g["params"])) for g in trainer.optimizers[0].param_groups],
            "requires_grad": {clean(n): p.requires_grad for n, p in pl_module.named_parameters()},
            "transitions": [t.epoch for c in trainer.callbacks for t in getattr(c, "transitions", [])],
        }
        torch.save(state, self.path.with_name(f"{self.path.name}.rank{trainer.global_rank}.pt"))


def local_and_whole(tensor: torch.Tensor) -> tuple[int, int]:
    """How many elements of ``tensor`` this rank holds, and how many the whole tensor has."""
    local = tensor.to_local() if is_shard(tensor) else tensor  # type: ignore[attr-defined]
    return local.numel(), tensor.numel()


def reference_run(
    out: Path, name: str, spec: Any = None, *, model: type[Net] = Net, data: type[Data] = Data, **trainer: Any
) -> dict[str, Any]:
    """Scenario ``name`` in one process with the global batch (``spec``: its strategy, by default the
    scenario's callback), as :class:`Dump` wrote it: the math a distributed run must match."""
    callback = resolve_strategy(spec) if spec is not None else make_callback(name)
    run = make_trainer(**{"callbacks": [Dump(out / name)], **trainer})
    run.finetune(model(), data(GLOBAL_BATCH), strategy=callback)
    return torch.load(out / f"{name}.rank0.pt", weights_only=False, map_location="cpu")


def assert_refused(runs: Path, scenario: str, expected: str) -> None:
    """Every rank of a refused ``scenario`` wrote a ``ConfigurationError`` that says ``expected``, and
    nothing trained (no :class:`Dump` was written)."""
    for rank in range(WORLD):
        error = (runs / f"{scenario}.error.rank{rank}.txt").read_text()
        assert error.startswith("ConfigurationError: "), error
        assert expected in error, error
        assert not (runs / f"{scenario}.rank{rank}.pt").exists()


def load_ranks(path: Path) -> list[dict[str, Any]]:
    return [torch.load(path.with_name(f"{path.name}.rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def shutdown() -> None:
    """End a launched script's rank once every rank is done: a barrier, then exit without tearing down
    the gloo group. ``destroy_process_group`` hung at this point in 2 of 3 runs with torch 2.1 and
    Lightning 2.6.0, and a group torn down at interpreter exit can abort; neither is under test."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def subprocess_env() -> dict[str, str]:
    """The environment for a launched script: this checkout and tests/ first on the path, one thread a rank, and
    faulthandler on, so that SIGABRT makes every rank print its Python stack (see :func:`finish`)."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    # the checkout, and tests/ for conftest's tiny models (the script's own folder, tests/helpers, comes first)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONFAULTHANDLER"] = "1"
    # PL_GLOBAL_SEED: a LightningCLI run in the test process seeds and exports it; under DDP Lightning would
    # reseed each rank from it after the model is built (peft's adapter init would then differ)
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    return env


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def launch(*args: str, merge_output: bool = False) -> subprocess.Popen[str]:
    """Start ``python ARGS`` in a process group of its own: the ranks Lightning starts join it."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=Path(__file__).resolve().parents[2],  # the checkout root: `-m benchmarks...` resolves
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # every process of the group has ended
        os.killpg(process.pid, sig)


def group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of process group ``pgid``, from /proc (empty where there is none)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return sorted(members)


def fail_with_stacks(process: subprocess.Popen[str], why: str) -> None:
    """Make every process of ``process``'s group print its Python stack and end, then fail the test with
    what they printed."""
    # faulthandler prints a rank's stack on SIGABRT, then the rank aborts; one at a time, so that the
    # stacks do not interleave on the shared stderr
    for pid in group_members(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
        time.sleep(0.5)
    stop_group(process, signal.SIGABRT)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop_group(process, signal.SIGKILL)
        stdout, stderr = process.communicate()
    stop_group(process, signal.SIGKILL)  # a rank that ignored SIGABRT
    pytest.fail(
        f"{' '.join(map(str, process.args))}: {why}; each rank's Python stack is in its output.\n"
        f"--- stdout ---\n{(stdout or '')[-6000:]}\n--- stderr ---\n{(stderr or '')[-12000:]}",
        pytrace=False,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for a launched script; past ``timeout`` seconds fail the test with every rank's output and stack."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        fail_with_stacks(process, f"did not finish in {timeout:.0f} s")
        raise  # not reached: pytest.fail raises
    stop_group(process, signal.SIGKILL)  # no rank outlives its launcher
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` to the end and assert it succeeded; a hang fails with the ranks' stacks."""
    result = finish(launch(*args), timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def kill_when_ready(process: subprocess.Popen[str], ready: Path, timeout: float = 300) -> None:
    """SIGKILL every rank of ``process`` (launched in its own process group) once ``ready`` exists."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{process.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            fail_with_stacks(process, f"did not reach the kill point in {timeout:.0f} s")
        time.sleep(0.2)
    stop_group(process, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def assert_bitwise_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
