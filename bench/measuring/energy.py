"""Energy a run used, where the machine can tell: NVML's energy counter on NVIDIA GPUs, RAPL on CPUs; never an estimate,
and every device counted once however many processes read it (docs/design.md).
"""
from __future__ import annotations

import glob
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.measuring.nvml import NvmlDevice, for_device

ENERGY_COUNTER = "nvmlDeviceGetTotalEnergyConsumption"
STOPPED = "NVML energy counter stopped answering during the run (nothing is estimated)"
POWERCAP = "/sys/class/powercap"
NO_RAPL = ("no RAPL counter readable: /sys/class/powercap/intel-rapl:* is absent or unreadable here (virtual "
           "machines rarely expose it, and it is often root-only); nothing is estimated")


def rapl_packages(root: str = POWERCAP) -> list[Path]:
    """The package-level RAPL zones (intel-rapl:N, not their sub-zones) whose counter this process can read."""
    zones = []
    for zone in sorted(glob.glob(f"{root}/intel-rapl:*")):
        counter = Path(zone) / "energy_uj"
        if zone.count(":") == 1 and counter.exists():
            try:
                int(counter.read_text())
            except (OSError, ValueError):
                continue
            zones.append(Path(zone))
    return zones


@dataclass
class EnergyCounter:
    """One process's cumulative energy counter in joules, or why there is none (`reason`); `key` names the counter for
    the run's sum, `read()` gives joules since it was opened, across RAPL's wrap-arounds."""

    key: str | None = None
    source: str | None = None
    reason: str | None = None
    _read: object = field(default=None, repr=False)
    _last: list[int] = field(default_factory=list, repr=False)
    _ranges: list[int] = field(default_factory=list, repr=False)
    _total: float = field(default=0.0, repr=False)
    _unit: float = field(default=1.0, repr=False)  # joules per counter unit

    @classmethod
    def open(cls, device: torch.device, local_main: bool, powercap: str = POWERCAP) -> EnergyCounter:
        if device.type == "cuda":
            return cls.nvml(for_device(device))
        zones = rapl_packages(powercap)
        if not zones:
            return cls(reason=NO_RAPL)
        if not local_main:  # the host's local main process reads its packages for every process on it
            return cls(key=None, source="RAPL (read by this host's local main process)")
        ranges = []
        for zone in zones:
            try:
                ranges.append(int((zone / "max_energy_range_uj").read_text()))
            except (OSError, ValueError):
                ranges.append(0)
        return cls(key=f"rapl@{platform.node()}", source=f"RAPL package counters ({len(zones)} package(s))",
                   _read=lambda: [int((zone / "energy_uj").read_text()) for zone in zones], _ranges=ranges)._started(1e-6)

    @classmethod
    def nvml(cls, device: NvmlDevice) -> EnergyCounter:
        """The GPU's own counter (millijoules since the driver loaded); under MIG none: it is the whole GPU's."""
        if device.reason is not None:
            return cls(reason=device.reason)
        reading = device.reading()
        if reading.quantity(ENERGY_COUNTER, "energy counter") is None:
            return cls(reason=f"NVML energy counter unreadable: {reading.note()['note']}")

        def read() -> list[int] | None:
            value = device.reading().quantity(ENERGY_COUNTER, "energy counter")
            return None if value is None else [value]

        return cls(key=device.uuid, source="NVML total energy counter, per GPU", _read=read, _ranges=[0])._started(1e-3)

    def _started(self, joules_per_unit: float) -> EnergyCounter:
        self._unit = joules_per_unit
        self._last = self._read()
        if self._last is None:
            self.reason = STOPPED
        return self

    @property
    def available(self) -> bool:
        return self.reason is None

    def read(self) -> float | None:
        """Joules since the counter was opened (None where there is none, or once a reading failed; 0 for a process
        that reads nothing)."""
        if self.reason is not None:
            return None
        if self._read is None:
            return 0.0
        now = self._read()
        if now is None:  # the run's energy is unknown, not partial
            self.reason = STOPPED
            return None
        for last, value, limit in zip(self._last, now, self._ranges):
            self._total += (value - last if value >= last or not limit else value + limit - last) * self._unit
        self._last = now
        return self._total


def summed(readings: list[tuple[str | None, list[float | None]]]) -> list[float | None]:
    """Element-wise sums of every process's readings, each counter (key) counted once; None if any is missing."""
    kept = {}
    for key, values in readings:
        if any(value is None for value in values):
            return [None] * len(values)
        if key is not None:
            kept.setdefault(key, values)
    width = len(readings[0][1]) if readings else 0
    return [sum(values[i] for values in kept.values()) for i in range(width)]


@dataclass
class EnergyLog:
    """A run's energy, one process's share: the whole session, the timed windows (opened and closed by the window
    timer) and a cumulative reading at every history row (for the energy to target)."""

    counter: EnergyCounter
    window_j: float = 0.0
    marks: list[float | None] = field(default_factory=list)
    _opened: float | None = None

    def window_open(self) -> None:
        self._opened = self.counter.read()

    def window_close(self) -> None:
        now = self.counter.read()
        if self._opened is not None and now is not None:
            self.window_j += now - self._opened
        self._opened = None

    def mark(self) -> None:
        self.marks.append(self.counter.read())

    def reading(self) -> tuple[str | None, list[float | None]]:
        """(counter key, [joules of the session, of the timed windows, at each history row]) for `summed`."""
        total = self.counter.read()
        return self.counter.key, [total, None if total is None else self.window_j, *self.marks]


def energy_metrics(sums: list[float | None], counter: EnergyCounter, timed_images: int, target_row: int | None,
                   resumed: bool) -> dict:
    """The run's energy metrics from the summed readings: all empty, with the reason in
    `energy_source`, where no counter was readable or the run was resumed (earlier sessions were not metered)."""
    source = counter.source if counter.available else counter.reason
    if resumed:
        source = "none: a resumed run (the sessions before the resume were not metered)"
    if resumed or not sums or sums[0] is None:
        return {"energy_kwh": None, "energy_j_per_image": None, "energy_to_target_kwh": None,
                "energy_source": source}
    total, window, marks = sums[0], sums[1], sums[2:]
    return {"energy_kwh": total / 3.6e6, "energy_j_per_image": window / timed_images if timed_images else None,
            "energy_to_target_kwh": marks[target_row] / 3.6e6 if target_row is not None else None,
            "energy_source": source}
