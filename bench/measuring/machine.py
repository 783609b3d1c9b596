"""The machine's fixed state, for every record's environment: driver and CUDA versions and power limits of the GPUs
(NVML), or the CPU's frequency governor, frequency range and memory (psutil, sysfs).

torchbench records these with every result because they explain differences between runs that the code does not:
a GPU capped at a lower power limit, an older driver, a CPU left on the `powersave` governor. What changes during a
run (clocks, temperature, throttling, other processes) is bench/measuring/watch.py's.
"""
from __future__ import annotations

from pathlib import Path

import psutil
import torch

CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def nvml():
    """pynvml, initialised, or None where it is not installed or finds no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 -- ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return None


def gpu_machine(device: torch.device) -> dict:
    """Driver, CUDA driver version and this GPU's power limit and memory, from NVML; a `note` when unreadable."""
    pynvml = nvml()
    if pynvml is None:
        return {"note": "NVML unavailable (install nvidia-ml-py: the `energy` extra)"}
    from bench.measuring.energy import nvml_handle

    _, handle = nvml_handle(device)
    cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    state = {"driver_version": pynvml.nvmlSystemGetDriverVersion(),
             "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}",
             "gpu_name": pynvml.nvmlDeviceGetName(handle), "gpu_uuid": pynvml.nvmlDeviceGetUUID(handle)}
    for name, read in (("power_limit_w", lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000),
                       ("max_sm_clock_mhz", lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                       ("max_memory_clock_mhz", lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
                       ("memory_total_bytes", lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).total)):
        try:
            state[name] = read()
        except pynvml.NVMLError:  # a query this GPU does not support stays out
            state[name] = None
    return state


def cpu_machine() -> dict:
    """The CPU's frequency governor and range (where the kernel exposes cpufreq: not in most virtual machines),
    its cores and the host's memory."""
    frequency = psutil.cpu_freq()
    return {"governor": read_text(CPUFREQ / "scaling_governor"),
            "freq_min_mhz": frequency.min or None if frequency else None,
            "freq_max_mhz": frequency.max or None if frequency else None,
            "logical_cpus": psutil.cpu_count(), "physical_cpus": psutil.cpu_count(logical=False),
            "memory_total_bytes": psutil.virtual_memory().total}


def machine_state(device: torch.device) -> dict:
    """The record's `env.machine`: the device's fixed state, and the host CPU's in every case."""
    state = {"cpu": cpu_machine()}
    if device.type == "cuda":
        state["gpu"] = gpu_machine(device)
    return state
