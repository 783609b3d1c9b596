"""What the device is and can do: its name, the precisions it computes and how, whether a compile mode replays
CUDA graphs, and its peak FLOP/s (datasheets for known GPUs, a timed matmul for others, none for CPUs)."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that replay CUDA graphs


def precision_error(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot run on `device`, or None when it can."""
    if precision == "fp16" and device.type != "cuda":
        return "fp16 needs a CUDA GPU; use bf16 (or no) on this device"
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it at
    about a tenth of the fp32 speed."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))


def uses_cuda_graphs(compile_mode: str | None, device: torch.device) -> bool:
    """Whether a model compiled in `compile_mode` replays CUDA graphs on `device`, so that every step must be
    marked (torch.compiler.cudagraph_mark_step_begin): once one call is marked, cudagraph trees take unmarked
    calls for the same step, and a step whose previous outputs are still alive records a new graph."""
    return device.type == "cuda" and compile_mode in CUDA_GRAPH_MODES


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
    and matmuls allow it (the runtime's configure_backends turns both on), plain fp32 otherwise."""
    if precision in ("bf16", "fp16"):
        return precision
    tf32 = torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() != "highest"
    return "tf32" if device.type == "cuda" and tf32 else "fp32"


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
    """(peak TFLOP/s of one device, its source): a datasheet for known GPUs, a timed matmul for others, none on a CPU,
    where a measured rate on a shared, frequency-scaling machine is no upper bound (it once gave an MFU of 106 %)."""
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
