"""The device's state at the start and at the end of a run's timed window: clocks, temperature, power, throttle
reasons and other processes on the GPU (NVML); the CPU's current frequency and governor (psutil, sysfs).

A result taken while the GPU throttled (power cap, thermal slowdown) or while another process shared it is not the
hardware's number: torchbench records clocks and throttling with every result to explain run-to-run variance, and a
shared GPU corrupts timings outright. So each run snapshots its device when the timed window opens and when training
ends, flags throttling and sharing in its metrics (`device_throttled`, `device_shared`), prints a warning line when
its GPU is shared, and the report marks such results.
"""
from __future__ import annotations

import os

import psutil
import torch

from bench.measuring.machine import CPUFREQ, nvml, read_text

# NVML clock-event reasons that mean the GPU ran below the clocks it could (idle, application clocks set by the
# administrator and display clocks are not throttling). Names as nvidia-smi prints them.
THROTTLE_REASONS = {
    "nvmlClocksEventReasonSwPowerCap": "sw_power_cap",
    "nvmlClocksEventReasonHwSlowdown": "hw_slowdown",
    "nvmlClocksEventReasonHwThermalSlowdown": "hw_thermal_slowdown",
    "nvmlClocksEventReasonSwThermalSlowdown": "sw_thermal_slowdown",
    "nvmlClocksEventReasonHwPowerBrakeSlowdown": "hw_power_brake_slowdown",
}


def gpu_snapshot(device: torch.device, own_pids: set[int]) -> dict:
    """Clocks, temperature, power, active throttle reasons and the other processes on this GPU."""
    pynvml = nvml()
    if pynvml is None:
        return {"note": "NVML unavailable (install nvidia-ml-py: the `energy` extra)"}
    from bench.measuring.energy import nvml_handle

    _, handle = nvml_handle(device)
    snap: dict = {}
    reads = {
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "memory_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
    }
    for name, read in reads.items():
        try:
            snap[name] = read()
        except pynvml.NVMLError:
            snap[name] = None
    try:
        mask = pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
        snap["throttle_reasons"] = [label for name, label in THROTTLE_REASONS.items() if mask & getattr(pynvml, name)]
    except pynvml.NVMLError:
        snap["throttle_reasons"] = None
    others = []
    for query in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            others += [{"pid": process.pid, "used_memory_bytes": process.usedGpuMemory}
                       for process in query(handle) if process.pid not in own_pids]
        except pynvml.NVMLError:
            pass
    snap["other_processes"] = list({process["pid"]: process for process in others}.values())
    return snap


def cpu_snapshot() -> dict:
    """The CPU's current frequency (mean over cores) and governor where the machine exposes them, and its load."""
    frequency = psutil.cpu_freq()
    return {"freq_current_mhz": frequency.current or None if frequency else None,
            "governor": read_text(CPUFREQ / "scaling_governor"), "load_avg_1min": os.getloadavg()[0]}


class Watch:
    """Snapshots of one process's device when its timed window opens (`start`) and when training ends (`stop`)."""

    def __init__(self, device: torch.device, own_pids: set[int]) -> None:
        self.device, self.own_pids = device, own_pids
        self.start_state: dict | None = None
        self.end_state: dict | None = None

    def snapshot(self) -> dict:
        state = {"cpu": cpu_snapshot()}
        if self.device.type == "cuda":
            state["gpu"] = gpu_snapshot(self.device, self.own_pids)
        return state

    def start(self) -> None:
        self.start_state = self.snapshot()
        if shared(self.start_state):
            pids = ", ".join(str(process["pid"]) for process in self.start_state["gpu"]["other_processes"])
            print(f"warning: GPU {torch.cuda.get_device_name(self.device)} is shared with other process(es) (pid {pids}):"
                  " timings taken now are not this run's alone; the record flags it", flush=True)

    def stop(self) -> None:
        self.end_state = self.snapshot()

    def states(self) -> dict:
        return {"start": self.start_state, "end": self.end_state}


def throttled(state: dict | None) -> bool | None:
    """Whether a snapshot shows a throttling GPU; None where that cannot be told (a CPU, no NVML)."""
    reasons = ((state or {}).get("gpu") or {}).get("throttle_reasons")
    return None if reasons is None else bool(reasons)


def shared(state: dict | None) -> bool | None:
    """Whether a snapshot shows other processes on the GPU; None where that cannot be told."""
    others = ((state or {}).get("gpu") or {}).get("other_processes")
    return None if others is None else bool(others)


def device_flags(states: list[dict]) -> dict:
    """The run's `device_throttled` and `device_shared` metrics over every process's start and end snapshots: True
    if any shows it, None where no snapshot can tell."""
    flags = {}
    for name, test in (("device_throttled", throttled), ("device_shared", shared)):
        seen = [test(state.get(end)) for state in states for end in ("start", "end")]
        known = [value for value in seen if value is not None]
        flags[name] = any(known) if known else None
    return flags
