"""Measuring tools shared by every variant: summary statistics, peak memory, optimizer state."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of ``values`` (0 <= q <= 1)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated timings, in milliseconds."""

    n: int
    median: float
    p10: float
    p90: float
    q1: float
    q3: float
    mean: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Summary:
        ms = [v * 1e3 for v in values]
        return cls(
            n=len(ms),
            median=statistics.median(ms),
            p10=quantile(ms, 0.1),
            p90=quantile(ms, 0.9),
            q1=quantile(ms, 0.25),
            q3=quantile(ms, 0.75),
            mean=statistics.fmean(ms),
        )

    @property
    def median_se(self) -> float:
        """Standard error of the median, estimated from the IQR (normal approximation)."""
        return 0.93 * (self.q3 - self.q1) / math.sqrt(max(self.n, 1))


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it sees it done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` after all queued work on ``device`` has finished."""
    synchronize(device)
    return time.perf_counter()


def _release_freed_memory() -> None:
    """Give memory freed by earlier variants back to the OS, so it does not count as theirs."""
    gc.collect()
    if sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        if name:
            libc = ctypes.CDLL(name)
            if hasattr(libc, "malloc_trim"):
                libc.malloc_trim(0)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory between :meth:`reset` and :meth:`peak`.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process's peak resident set size, read from
    ``/proc/self/status`` (VmHWM) after resetting it through ``/proc/self/clear_refs``; where that is
    unavailable, ``resource.getrusage`` gives the peak over the whole process (``scope`` says which).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.scope = "phase"
        self.start_bytes = 0

    @property
    def kind(self) -> str:
        return "cuda max_memory_allocated" if self.device.type == "cuda" else "peak RSS"

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        rss = _proc_status_kib("VmRSS")
        return rss * 1024 if rss is not None else 0

    def begin_variant(self) -> None:
        """Free what earlier variants left behind and remember the memory in use now."""
        _release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.start_bytes = self.current()
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_peak_rss() or _proc_status_kib("VmHWM") is None:
            self.scope = "process"

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.scope == "phase":
            hwm = _proc_status_kib("VmHWM")
            if hwm is not None:
                return hwm * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


@dataclass(frozen=True)
class OptimizerState:
    """Bytes held in an optimizer's per-parameter state, split by whether the parameter is frozen."""

    total_bytes: int
    frozen_bytes: int
    param_groups: int
    params: int
    frozen_params: int

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> OptimizerState:
        total = frozen = 0
        for param, state in optimizer.state.items():
            size = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
            total += size
            if isinstance(param, torch.Tensor) and not param.requires_grad:
                frozen += size
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return cls(
            total_bytes=total,
            frozen_bytes=frozen,
            param_groups=len(optimizer.param_groups),
            params=len(params),
            frozen_params=sum(1 for p in params if not p.requires_grad),
        )
