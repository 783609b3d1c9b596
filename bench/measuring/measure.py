"""Measurement conventions after timm's benchmark.py: time only device-synchronised windows after warm-up, count the
images in them, measure the data stall where it costs, and keep per-step work free of host syncs.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist

from bench.measuring.energy import EnergyLog


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, in place, the element-wise maximum over every process: per-process results merged."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that host clocks bracket it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")  # CUDA, and the CPU allocator's


def is_oom(error: BaseException) -> bool:
    """Whether an exception means the device (or host) ran out of memory: a result, not a crash."""
    message = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(text in message for text in OOM_MESSAGES)


def reset_peak_memory(device: torch.device, drop_cached: bool = False) -> None:
    """Start a new peak (CUDA's allocator statistics, or the CPU's RSS high-water mark); with `drop_cached`, a finished
    run's cached blocks go back to the driver first, so they do not count in the next run's peak."""
    if device.type == "cuda":
        if drop_cached:
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the peak runs from the process's start


def peak_memory_bytes(device: torch.device) -> tuple[int, int]:
    """(peak allocated, peak reserved) device memory since the last reset; on CPU both are peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) * 1024
                    return rss, rss
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return rss, rss


@dataclass
class WindowTimer:
    """A timed window of steps: images counted, device-synchronised ends, and the data stall measured where it costs: on
    CUDA as GPU idle time between events around `next(loader)` (the host's wait would also count GPU back-pressure)."""

    device: torch.device
    images: int = 0
    data_wait_s: float = 0.0
    seconds: float = 0.0
    energy: EnergyLog | None = None  # its counter is read at both synchronised ends of every window
    _start: float | None = field(default=None, repr=False)
    _waits: list = field(default_factory=list, repr=False)  # CUDA (before, after) event pairs

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        synchronize(self.device)
        if self.energy is not None:
            self.energy.window_open()
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        if self.energy is not None:
            self.energy.window_close()
        self._start = None
        self.data_wait_s += sum(before.elapsed_time(after) for before, after in self._waits) / 1000
        self._waits.clear()

    @contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        """Around `next(loader)`: adds the wait to the window's data stall (see the class docstring)."""
        if not self.running:
            yield
            return
        if self.device.type == "cuda":
            before = torch.cuda.Event(enable_timing=True)
            before.record()
            try:
                yield
            finally:
                after = torch.cuda.Event(enable_timing=True)
                after.record()
                self._waits.append((before, after))
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data_wait_s += time.perf_counter() - start

    def elapsed(self) -> float:
        """Seconds so far, including the running window (host clock, no sync: for progress only)."""
        return self.seconds + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def count(self, images: int) -> None:
        if self.running:
            self.images += images

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class TimeToTarget(NamedTuple):
    seconds: float | None  # training seconds (evaluation excluded)
    wall_seconds: float | None  # wall clock from the run's first touch of the data, evaluation included
    epochs: float | None


def time_to_target(history: list[dict], target: float | None) -> TimeToTarget:
    """How long until validation accuracy first reached the target (all None if it never did)."""
    if target is not None:
        seconds = 0.0
        for row in history:
            seconds += row["train_time_s"]
            if row["val_acc"] >= target:
                return TimeToTarget(seconds, row["elapsed_s"], row["epoch"])
    return TimeToTarget(None, None, None)
