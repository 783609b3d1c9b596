"""Measurement conventions (after timm's benchmark.py): time only synchronised windows after warm-up,
count images per window, and keep per-step work free of host syncs.

Definitions used in records and reports:
- throughput: images / seconds inside the timed window, per process; the suite sums over processes.
- data stall: share of the timed window the device sat waiting for `next(loader)` (see WindowTimer).
- MFU: achieved training FLOP/s (model facts x images/s) over the devices' peak FLOP/s.
"""
from __future__ import annotations

import re
import resource
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, NamedTuple

import torch

# Dense (no sparsity) peaks from the vendors' datasheets, TFLOP/s: bf16/fp16 and TF32 tensor cores,
# and plain fp32. Keys are matched as whole words of the device name, most specific first.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


def math_mode(device: torch.device, precision: str) -> str:
    """What the convolutions and matmuls really run in: precision "no" is TF32 on CUDA when both cuDNN
    and matmuls allow it (bench/runtime.py configure_backends turns both on), plain fp32 otherwise."""
    if precision in ("bf16", "fp16"):
        return precision
    tf32 = torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() != "highest"
    return "tf32" if device.type == "cuda" and tf32 else "fp32"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that host clocks bracket it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return "CPU"


def datasheet_peak(device_name: str, mode: str) -> tuple[float, str] | None:
    """(TFLOP/s, source) from the datasheet table for a GPU name and math mode, or None when unknown.
    Keys match whole words, most specific first ("H100 PCIe" before "H100", "L40S" before "L4")."""
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if re.search(rf"\b{re.escape(key)}\b", device_name) and mode in peaks:
            return peaks[mode], f"datasheet {key} {mode}"
    return None


@lru_cache(maxsize=None)
def peak_tflops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak TFLOP/s of one device, where the number comes from): datasheet for known GPUs, else measured.

    On a CPU the peak is the faster of the measured fp32 and bf16 matmul rates whatever the precision:
    autocast leaves many ops in fp32, and where bf16 is emulated (no AVX512-BF16 or AMX) it is ~10x
    slower than fp32, so dividing by the bf16 rate alone gave MFUs of 800 %. A true upper bound keeps
    MFU at or under 100 %.
    """
    mode = math_mode(device, precision)
    if device.type == "cuda" and (known := datasheet_peak(torch.cuda.get_device_name(device), mode)):
        return known
    if device.type == "cpu":
        rates = {name: measured_matmul_tflops(device, name) for name in ("no", "bf16")}
        return max(rates.values()), "measured matmul, max of fp32 and bf16"
    return measured_matmul_tflops(device, precision), f"measured {mode} matmul"


def measured_matmul_tflops(device: torch.device, precision: str, size: int = 1024, repeats: int = 10) -> float:
    """Best-of-several square matmul rate: a practical peak for devices without a datasheet entry."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")  # CUDA, and the CPU allocator's


def is_oom(error: BaseException) -> bool:
    """Whether an exception means the device (or host) ran out of memory: a result, not a crash."""
    message = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(text in message for text in OOM_MESSAGES)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on CPU the kernel's RSS high-water mark."""
    if device.type == "cuda":
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
    """A timed window of steps: images counted, time stalled on data, device-synchronised ends.

    The data stall is measured where it costs: on CUDA as device-timeline time between CUDA events
    recorded before and after `next(loader)` (the GPU sitting idle for want of a batch). The host's own
    wait would also count GPU back-pressure: ffcv's blocking copy waits for the default stream, so a
    GPU-bound run's host blocks in `next()` although the GPU never starves. On a CPU, host time.
    """

    device: torch.device
    images: int = 0
    data_wait_s: float = 0.0
    seconds: float = 0.0
    _start: float | None = field(default=None, repr=False)
    _waits: list = field(default_factory=list, repr=False)  # CUDA (before, after) event pairs

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
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
