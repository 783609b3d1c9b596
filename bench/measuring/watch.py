"""The device's state when a run's timed window opens and when training ends (clocks, temperature, power, clock-event
reasons, other processes; the CPU's frequency and governor): a slowed-down or shared GPU's timings are flagged.
"""
from __future__ import annotations

import os

import psutil
import torch

from bench.measuring.machine import CPUFREQ, power_limits, read_text
from bench.measuring.nvml import NvmlDevice, Reading, for_device

# NVML's clock-event reasons (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*): (name, label, slowdown).
# Every active reason is recorded; only a slowdown makes a run `device_throttled`: hardware slowdown, thermal
# slowdown (hardware or software) and the power brake. Running at the software power cap is what an H100 or H200
# does under load, and idle, application or display clocks and sync boost are settings, not slowdowns.
CLOCK_EVENT_REASONS = (
    ("GpuIdle", "gpu_idle", False), ("ApplicationsClocksSetting", "applications_clocks_setting", False),
    ("SwPowerCap", "sw_power_cap", False), ("HwSlowdown", "hw_slowdown", True), ("SyncBoost", "sync_boost", False),
    ("SwThermalSlowdown", "sw_thermal_slowdown", True), ("HwThermalSlowdown", "hw_thermal_slowdown", True),
    ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown", True), ("DisplayClockSetting", "display_clock_setting", False),
    ("BoardLimit", "board_limit", False), ("Reliability", "reliability", False),
)
SLOWDOWNS = {label for _, label, slowdown in CLOCK_EVENT_REASONS if slowdown}


def clock_event_reasons(reading: Reading, mask: int) -> list[str]:
    """The labels of the reasons set in NVML's bit mask; a bit this table does not know is kept as its hex value."""
    labels = []
    for name, label, _ in CLOCK_EVENT_REASONS:
        bit = reading.constant(f"nvmlClocksEventReason{name}") or reading.constant(f"nvmlClocksThrottleReason{name}")
        if bit and mask & bit:
            labels.append(label)
            mask &= ~bit
    return labels + [f"0x{1 << position:x}" for position in range(mask.bit_length()) if mask >> position & 1]


def other_processes(reading: Reading, own_pids: set[int]) -> list[dict] | None:
    """The processes on this GPU other than the run's own; None where that cannot be told: no answer, or a list
    without any of our processes (in a container NVML gives host PIDs, which cannot be told from ours)."""
    listed, answered = [], False
    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        processes = reading.own(name)
        if processes is not None:
            answered, listed = True, listed + list(processes)
    if not answered:
        return None
    if not {process.pid for process in listed} & own_pids:
        reading.notes.append(f"other processes unknown: NVML lists {len(listed)} process(es), none of this run's "
                             "(in a container NVML gives host PIDs: others cannot be told from ours)")
        return None
    return list({process.pid: {"pid": process.pid, "used_memory_bytes": process.usedGpuMemory}
                 for process in listed if process.pid not in own_pids}.values())


def gpu_snapshot(device: NvmlDevice, own_pids: set[int]) -> dict:
    """Clocks, temperature, power and its limits, every active clock-event reason and the other processes on this
    GPU, each empty where NVML does not answer (the note says which call)."""
    if device.reason is not None:
        return {"note": device.reason}
    reading = device.reading()

    def clock(kind: str) -> int | None:
        return reading.quantity("nvmlDeviceGetClockInfo", "clocks", args=(reading.constant(kind),))

    power = reading.quantity("nvmlDeviceGetPowerUsage", "power")
    mask = reading.condition("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
    return {"sm_clock_mhz": clock("NVML_CLOCK_SM"), "memory_clock_mhz": clock("NVML_CLOCK_MEM"),
            "temperature_c": reading.condition("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature",
                                               args=(reading.constant("NVML_TEMPERATURE_GPU"),)),
            "power_w": None if power is None else power / 1000, **power_limits(reading),
            "throttle_reasons": None if mask is None else clock_event_reasons(reading, mask),
            "other_processes": other_processes(reading, own_pids)} | reading.note()


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
            state["gpu"] = gpu_snapshot(for_device(self.device), self.own_pids)
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


def gpu_field(state: dict | None, name: str):
    return ((state or {}).get("gpu") or {}).get(name)


def throttled(state: dict | None) -> bool | None:
    """Whether a snapshot shows a GPU slowed down (SLOWDOWNS); None where that cannot be told (a CPU, no NVML)."""
    reasons = gpu_field(state, "throttle_reasons")
    return None if reasons is None else bool(SLOWDOWNS & set(reasons))


def shared(state: dict | None) -> bool | None:
    """Whether a snapshot shows other processes on the GPU; None where that cannot be told."""
    others = gpu_field(state, "other_processes")
    return None if others is None else bool(others)


def power_limited(state: dict | None) -> bool | None:
    """Whether a snapshot shows an enforced power limit below the card's default; None where that cannot be told."""
    return gpu_field(state, "power_limited")


def device_flags(states: list[dict]) -> dict:
    """The run's `device_throttled`, `device_shared` and `power_limited` metrics over every process's start and end
    snapshots: True if any shows it, None where no snapshot can tell."""
    flags = {}
    for name, test in (("device_throttled", throttled), ("device_shared", shared), ("power_limited", power_limited)):
        seen = [test(state.get(end)) for state in states for end in ("start", "end")]
        known = [value for value in seen if value is not None]
        flags[name] = any(known) if known else None
    return flags
