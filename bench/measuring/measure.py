"""Measurement conventions (after timm's benchmark.py): time only synchronised windows after warm-up,
count images per window, and keep per-step work free of host syncs.

Definitions used in records and reports:
- throughput: images / seconds inside the timed window, per process; the suite sums over processes.
- data stall: share of the timed window the device sat waiting for `next(loader)` (see WindowTimer).
- MFU: achieved training FLOP/s (model facts x images/s) over the devices' peak FLOP/s (GPUs only).
"""
from __future__ import annotations

import re
import resource
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, NamedTuple

import torch

class DatasheetPeak(NamedTuple):
    tflops: dict[str, float]  # math mode (bf16, fp16, tf32, fp32) -> dense TFLOP/s
    source: str  # the datasheet the numbers come from


# Dense (no sparsity) peaks from the vendors' datasheets, TFLOP/s, per GPU: bf16/fp16 and TF32 tensor cores,
# and plain fp32. Datasheets quote tensor-core rates "with sparsity"; the dense rate is half of that. Keys match
# whole words of torch.cuda.get_device_name() ('NVIDIA H200 NVL', 'NVIDIA A100-SXM4-80GB', 'Tesla T4'), the
# longest key first, so that a variant ('H200 NVL') is never read as its family ('H200').
_HOPPER_SXM = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}
_HOPPER_PCIE = {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}
_HOPPER_NVL = {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}
_AMPERE_A100 = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
GPU_PEAKS: dict[str, DatasheetPeak] = {
    "B200": DatasheetPeak({"bf16": 2250.0, "fp16": 2250.0, "tf32": 1125.0, "fp32": 75.0},
                          "NVIDIA HGX B200 datasheet, per GPU (2025)"),
    "H200 NVL": DatasheetPeak(_HOPPER_NVL, "NVIDIA H200 datasheet, H200 NVL column (2024)"),
    "H200": DatasheetPeak(_HOPPER_SXM, "NVIDIA H200 datasheet, H200 SXM column (2024)"),
    "GH200": DatasheetPeak(_HOPPER_SXM, "NVIDIA GH200 Grace Hopper Superchip datasheet, H100 GPU (2023)"),
    "H100 NVL": DatasheetPeak(_HOPPER_NVL, "NVIDIA H100 datasheet, H100 NVL column (2023)"),
    "H100 PCIe": DatasheetPeak(_HOPPER_PCIE, "NVIDIA H100 datasheet, H100 PCIe column (2023)"),
    "H100": DatasheetPeak(_HOPPER_SXM, "NVIDIA H100 datasheet, H100 SXM column (2023)"),
    "H800 PCIe": DatasheetPeak(_HOPPER_PCIE, "NVIDIA H800 PCIe datasheet (2023): H100 PCIe's compute"),
    "H800": DatasheetPeak(_HOPPER_SXM, "NVIDIA H800 SXM datasheet (2023): H100 SXM's compute"),
    "A100": DatasheetPeak(_AMPERE_A100, "NVIDIA A100 datasheet (2021): SXM and PCIe, 40 and 80 GB alike"),
    "A10G": DatasheetPeak({"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
                          "AWS EC2 G5 (A10G) documentation (2021)"),
    "A10": DatasheetPeak({"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}, "NVIDIA A10 datasheet (2021)"),
    "L40S": DatasheetPeak({"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
                          "NVIDIA L40S datasheet (2023)"),
    "L40": DatasheetPeak({"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}, "NVIDIA L40 datasheet (2022)"),
    "L4": DatasheetPeak({"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}, "NVIDIA L4 datasheet (2023)"),
    "RTX 4090": DatasheetPeak({"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
                              "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 (2022)"),
    "V100": DatasheetPeak({"fp16": 125.0, "fp32": 15.7}, "NVIDIA V100 datasheet, SXM2 column (2020)"),
    "T4": DatasheetPeak({"fp16": 65.0, "fp32": 8.1}, "NVIDIA T4 datasheet (2019)"),
}


def math_mode(device: torch.device, precision: str) -> str:
    """What the convolutions and matmuls really run in: precision "no" is TF32 on CUDA when both cuDNN
    and matmuls allow it (bench/training/runtime.py configure_backends turns both on), plain fp32 otherwise."""
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
    """(TFLOP/s, source) from GPU_PEAKS for a GPU name and math mode, or None when unknown (no made-up
    figure: a V100 has no bf16 entry). Keys match whole words, the longest first ("H200 NVL" before "H200",
    "L40S" before "L4"); "GH200" is a word of its own, so it never reads as "H200"."""
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        peak = GPU_PEAKS[key]
        if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", device_name) and mode in peak.tflops:
            return peak.tflops[mode], f"datasheet {key} {mode}: {peak.source}"
    return None


@lru_cache(maxsize=None)
def peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device, where the number comes from): the datasheet for known GPUs, a measured
    matmul rate for other GPUs, and none on a CPU.

    A CPU has no peak we can trust: a measured matmul rate on a shared, frequency-scaling machine is no upper
    bound (it gave an MFU of 106 %), and a theoretical one needs the turbo clock and the FLOPs per cycle of
    the vector units, which a virtual machine does not reliably expose. So CPU runs record achieved TFLOP/s
    and no MFU, rather than an impossible or invented figure.
    """
    mode = math_mode(device, precision)
    if device.type == "cuda":
        if known := datasheet_peak(torch.cuda.get_device_name(device), mode):
            return known
        return measured_matmul_tflops(device, precision), f"measured {mode} matmul (no datasheet entry)"
    return None, "none: no trustworthy peak on a CPU"


def measured_matmul_tflops(device: torch.device, precision: str, size: int = 8192, repeats: int = 5) -> float:
    """The best of several large square matmuls timed between CUDA events: a practical peak for a GPU without
    a datasheet entry. 8192³ keeps the tensor cores busy for milliseconds a product, so kernel launches do not
    count (a 1024³ product timed with host syncs ran several times under the peak and inflated MFU)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)  # cuBLAS picks its kernel and its workspace
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * size**3 / best / 1e12


OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")  # CUDA, and the CPU allocator's


def is_oom(error: BaseException) -> bool:
    """Whether an exception means the device (or host) ran out of memory: a result, not a crash."""
    message = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(text in message for text in OOM_MESSAGES)


def reset_peak_memory(device: torch.device, drop_cached: bool = False) -> None:
    """Start a new peak: CUDA's allocator statistics, or on CPU the kernel's RSS high-water mark.

    With `drop_cached` (a run's first reset), CUDA's cached free blocks go back to the driver first: a finished
    run's blocks stay cached after its objects die, and would count in the next run's peak reserved memory
    (bench/training/runtime.py release() cannot free them: it runs while the run's objects are still alive)."""
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
    energy: Any = None  # bench/measuring/energy.py EnergyLog: its counter is read at both synchronised ends of every window
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
