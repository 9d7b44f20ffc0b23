"""Measuring tools: timed samples and their summaries, the CPU meter, peak memory, optimizer state, and a
description of the machine they ran on."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import lightning
import timm
import torch

T = TypeVar("T")

Clock = Literal["cpu", "wall"]
"""What a step's time is: ``wall`` (``time.perf_counter``) or ``cpu`` (this process's CPU time,
``time.process_time``: every thread of the process, none of the time it waited for a core)."""


def quiet_or_all(items: Sequence[T], is_quiet: Callable[[T], bool], minimum: int) -> tuple[list[T], bool]:
    """The items measured while the machine was quiet, and True, when there are at least ``minimum`` of them
    (or all items are); else every item, and False. Never looks at the measured times."""
    kept = [item for item in items if is_quiet(item)]
    if len(kept) >= min(minimum, len(items)):
        return kept, True
    return list(items), False


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of ``values`` (0 <= q <= 1)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Sample:
    """One measured step (or epoch).

    ``step_s``: from the batch on the device to the optimizer step done, by the wall clock; ``cpu_s``: the CPU
    time this process used meanwhile; ``period_s``: from one batch in hand to the next (``None`` for an
    epoch's last step, or in a lockstep ring); ``others``: the share of the machine's CPU that other
    processes used meanwhile (``None`` where it cannot be read).
    """

    step_s: float
    others: float | None = None
    period_s: float | None = None
    cpu_s: float | None = None

    def quiet(self, threshold: float) -> bool:
        """Other processes used at most ``threshold`` of the machine's CPU during the step (or it is unknown)."""
        return self.others is None or self.others <= threshold

    def seconds(self, clock: Clock) -> float:
        if clock == "wall":
            return self.step_s
        if self.cpu_s is None:
            raise ValueError("this sample has no CPU time")
        return self.cpu_s


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
        p10, q1, q3, p90 = (quantile(ms, q) for q in (0.1, 0.25, 0.75, 0.9))
        return cls(len(ms), statistics.median(ms), p10, p90, q1, q3, statistics.fmean(ms))


@dataclass(frozen=True)
class CpuReading:
    """Busy CPU time of the whole machine and of this process, in clock ticks, at ``wall``."""

    machine_busy: int
    own: int
    wall: float


class CpuMeter:
    """How much of the machine's CPU *other* processes used between two readings.

    Reads ``/proc/stat`` (busy = all but idle and iowait, steal included) and ``/proc/self/stat`` (this
    process's user + system time, all threads). Where those do not exist, :meth:`read` returns ``None`` and
    every step counts as quiet.
    """

    def __init__(self) -> None:
        try:
            with open("/proc/stat") as stat:
                self.cpus = sum(1 for line in stat if line.startswith("cpu") and line[3].isdigit())
            self.tick = os.sysconf("SC_CLK_TCK")
            self.available = self.cpus > 0 and self.read() is not None
        except (OSError, ValueError, IndexError):
            self.available = False

    def read(self) -> CpuReading | None:
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:9]]
            with open("/proc/self/stat") as own:
                fields = own.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(values) - values[3] - values[4]  # minus idle and iowait
        return CpuReading(busy, int(fields[11]) + int(fields[12]), time.perf_counter())  # utime, stime

    def others_share(self, start: CpuReading | None, end: CpuReading | None) -> float | None:
        """Fraction (0-1) of the machine's CPU capacity used by other processes from start to end."""
        if start is None or end is None or not self.available or end.wall <= start.wall:
            return None
        others = (end.machine_busy - start.machine_busy) - (end.own - start.own)
        return max(others, 0) / ((end.wall - start.wall) * self.tick * self.cpus)


def _glibc_function(name: str) -> Any:
    """A function of the C library when it is glibc on Linux (which has it), else None."""
    if not sys.platform.startswith("linux"):
        return None
    path = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(path), name, None) if path else None


def release_freed_memory() -> None:
    """Give memory freed earlier back to the OS, so that it does not count as what comes next."""
    gc.collect()
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)


def single_malloc_arena() -> bool:
    """Make every thread of this process allocate from glibc's one main arena; True when that took effect.

    By default each thread gets an arena of its own, and arenas with different histories fault pages in at
    different rates: two identical minimal loops in two lockstep threads differed by 5.3% (standard deviation
    of their paired median ratio over 10 rounds) with an arena each, 1.1% with one shared arena. Only one
    lockstep run works at a time, so the arena is never contended. Call it before starting the threads.
    """
    mallopt = _glibc_function("mallopt")
    m_arena_max = -8  # glibc's mallopt parameter
    return mallopt is not None and mallopt(m_arena_max, 1) == 1


def proc_status_bytes(field: str) -> int | None:
    """``VmRSS``, ``VmHWM`` (the peak since the last reset) or another size field of ``/proc/self/status``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart ``VmHWM`` from the current resident size (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory between :meth:`reset` and :meth:`peak`.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident set size (``VmHWM``, reset through
    ``/proc/self/clear_refs``); where that is unavailable, ``resource.getrusage`` gives the peak over the
    whole process (``scope`` says which).
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
        return proc_status_bytes("VmRSS") or 0

    def begin_variant(self) -> None:
        """Free what earlier variants left behind and remember the memory in use now."""
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.start_bytes = self.current()
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not reset_peak_rss() or proc_status_bytes("VmHWM") is None:
            self.scope = "process"

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = proc_status_bytes("VmHWM") if self.scope == "phase" else None
        if hwm is not None:
            return hwm
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
        frozen_params = sum(1 for p in params if not p.requires_grad)
        return cls(total, frozen, len(optimizer.param_groups), len(params), frozen_params)


class Started(NamedTuple):
    """Where a timed window began: the CPU meter's reading, this process's CPU time and the wall clock."""

    reading: CpuReading | None
    cpu: float
    wall: float


NOT_STARTED = Started(None, 0.0, 0.0)


@dataclass(frozen=True)
class Instruments:
    """What every variant is measured with: the device's clock, its memory and the CPU meter."""

    device: torch.device
    memory: PeakMemory
    cpu: CpuMeter

    @classmethod
    def for_device(cls, device: torch.device) -> Instruments:
        return cls(device, PeakMemory(device), CpuMeter())

    def _synchronize(self) -> None:
        if self.device.type == "cuda":  # a clock read after this sees the queued device work done
            torch.cuda.synchronize(self.device)

    def start(self) -> Started:
        """Read the CPU meter, then the clocks (so the meter's cost is outside the window)."""
        reading = self.cpu.read()
        self._synchronize()
        return Started(reading, time.process_time(), time.perf_counter())

    def stop(self, started: Started) -> Sample:
        """The window since ``started``, and what other processes used of the CPU meanwhile."""
        self._synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        others = self.cpu.others_share(started.reading, self.cpu.read())
        return Sample(wall - started.wall, others, cpu_s=cpu - started.cpu)


def _first_field(path: str, prefix: str) -> str | None:
    """The text after ``:`` on the first line of ``path`` that starts with ``prefix``."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)), None)


def _git_commit() -> str | None:
    command = ["git", "rev-parse", "--short", "HEAD"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe_machine(device: torch.device) -> dict[str, Any]:
    """CPU, cores, memory, accelerator, library versions, torch threads and the load average now."""
    cpu, memory = _first_field("/proc/cpuinfo", "model name"), _first_field("/proc/meminfo", "MemTotal:")
    return {
        "cpu": cpu if cpu is not None else platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_start": load_average(),
        "git_commit": _git_commit(),
    }
