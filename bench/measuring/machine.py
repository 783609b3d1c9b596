"""The machine's fixed state for every record: the GPUs' driver, CUDA version, power limits, compute and MIG modes, or
the CPU's governor, frequencies and memory; they explain differences between runs that the code does not.
"""
from __future__ import annotations

from pathlib import Path

import psutil
import torch

from bench.measuring.nvml import NvmlDevice, Reading, for_device

CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


COMPUTE_MODES = {"NVML_COMPUTEMODE_DEFAULT": "default", "NVML_COMPUTEMODE_EXCLUSIVE_THREAD": "exclusive_thread",
                 "NVML_COMPUTEMODE_PROHIBITED": "prohibited", "NVML_COMPUTEMODE_EXCLUSIVE_PROCESS": "exclusive_process"}


def power_limits(reading: Reading) -> dict:
    """The enforced power limit beside the card's default, and whether an administrator capped it below the default
    (a real slowdown, unlike running at the limit, which is normal under load)."""
    enforced = reading.quantity("nvmlDeviceGetEnforcedPowerLimit", "power limit")
    default = reading.quantity("nvmlDeviceGetPowerManagementDefaultLimit", "power limit")
    return {"power_limit_w": None if enforced is None else enforced / 1000,
            "power_limit_default_w": None if default is None else default / 1000,
            "power_limited": None if enforced is None or default is None else enforced < default}


def modes(reading: Reading) -> dict:
    """Compute mode (EXCLUSIVE_PROCESS admits one CUDA context at a time) and MIG, of the physical GPU."""
    mode = reading.condition("nvmlDeviceGetComputeMode")
    names = {reading.constant(constant): name for constant, name in COMPUTE_MODES.items()}
    mig_mode = reading.condition("nvmlDeviceGetMigMode")  # [current, pending]
    return {"compute_mode": names.get(mode, mode), "mig": reading.device.mig,
            "mig_mode": None if mig_mode is None else ("enabled" if mig_mode[0] else "disabled")}


def gpu_state(device: NvmlDevice) -> dict:
    """Driver and CUDA driver versions, the GPU's name, power limits, clocks, memory and modes, each empty where NVML
    does not answer (the note says which call)."""
    if device.reason is not None:
        return {"note": device.reason}
    reading = device.reading()
    cuda = reading.system("nvmlSystemGetCudaDriverVersion")
    memory = reading.own("nvmlDeviceGetMemoryInfo")
    return {"driver_version": reading.system("nvmlSystemGetDriverVersion"),
            "cuda_driver_version": None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
            "gpu_name": reading.own("nvmlDeviceGetName"), "gpu_uuid": device.uuid, **power_limits(reading),
            "max_sm_clock_mhz": reading.quantity("nvmlDeviceGetMaxClockInfo", "clocks",
                                                 args=(reading.constant("NVML_CLOCK_SM"),)),
            "max_memory_clock_mhz": reading.quantity("nvmlDeviceGetMaxClockInfo", "clocks",
                                                     args=(reading.constant("NVML_CLOCK_MEM"),)),
            "memory_total_bytes": None if memory is None else memory.total, **modes(reading)} | reading.note()


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
        state["gpu"] = gpu_state(for_device(device))
    return state
