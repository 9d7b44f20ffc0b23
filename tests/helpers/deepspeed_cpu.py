"""Lightning's ``DeepSpeedStrategy`` on CPU, for tests on machines without CUDA.

Lightning refuses any accelerator but CUDA in ``setup_environment`` and checks device indices,
which CPU devices lack; DeepSpeed itself has a CPU
accelerator and talks gloo there. This subclass lifts only that guard: the engine, the ZeRO
optimizer and Lightning's DeepSpeed code paths are the real ones.
"""

from __future__ import annotations

import os

import deepspeed.comm.torch as deepspeed_comm
import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    strategy_name = "deepspeed_cpu"

    @property
    def root_device(self) -> torch.device:
        # DeepSpeed reads a device index as the rank of a device to select (a no-op on CPU)
        return torch.device("cpu", 0)

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # everything but the CUDA check

    def setup_distributed(self) -> None:
        # CPU devices have no index, so skip the check that indices match the local ranks
        reset_seed()
        self.set_world_ranks()
        # DeepSpeed's shared-memory op serves inference all-reduce only; skip its C++ build
        deepspeed_comm.build_shm_op = lambda: None
        self._init_deepspeed_distributed()


def use_cuda(world: int) -> bool:
    """Whether to run on CUDA: only with a GPU per rank, and unless ``DS_ACCELERATOR=cpu``."""
    return os.environ.get("DS_ACCELERATOR") != "cpu" and torch.cuda.device_count() >= world


def deepspeed_strategy(stage: int, world: int) -> tuple[str, DeepSpeedStrategy]:
    """The accelerator and a DeepSpeed strategy for ``world`` ranks: CUDA when there is a GPU for
    each rank, else DeepSpeed's CPU accelerator over gloo."""
    if use_cuda(world):
        return "gpu", DeepSpeedStrategy(stage=stage)
    return "cpu", CPUDeepSpeedStrategy(stage=stage, process_group_backend="gloo")
