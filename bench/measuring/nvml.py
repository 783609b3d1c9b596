"""This process's one NVML session: pynvml initialised once, a CUDA device's handle found by UUID (MIG-aware), and every
query guarded, so that a failing or missing NVML function leaves an empty field and a note, never a failed run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

NOT_INSTALLED = "NVML unavailable: nvidia-ml-py is not installed (pip install 'deepnets-bench[energy]')"
MIG_WHOLE_GPU = "not read on a MIG slice: the whole physical GPU's {what}, not the slice's"


@functools.cache
def library() -> tuple[Any, str | None]:
    """(pynvml, initialised, and None), once per process; or (None, why there is none)."""
    try:
        import pynvml
    except ImportError:
        return None, NOT_INSTALLED
    try:
        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 -- NVMLError_LibraryNotFound, _DriverNotLoaded, a sandbox's OSError
        return None, f"NVML unavailable: nvmlInit failed ({describe(error)})"
    return pynvml, None


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@dataclass(frozen=True)
class NvmlDevice:
    """A CUDA device as NVML sees it: its handle (a slice's under MIG) and its physical GPU's; or why there is none."""

    pynvml: Any = None
    handle: Any = None
    gpu: Any = None  # the physical GPU's handle: `handle` itself without MIG, None where NVML did not give it
    uuid: str | None = None  # as NVML matched it: GPU-... or, for a MIG slice, MIG-...
    reason: str | None = None  # why no query can be made (no NVML, no handle)

    @property
    def mig(self) -> bool:
        return bool(self.uuid and self.uuid.startswith("MIG-"))

    @classmethod
    def open(cls, cuda_uuid: str, pynvml: Any, reason: str | None = None) -> NvmlDevice:
        """The device whose CUDA UUID is `cuda_uuid` (as torch gives it: without NVML's GPU-/MIG- prefix), matched
        by UUID so that CUDA_VISIBLE_DEVICES cannot mismatch them."""
        if pynvml is None:
            return cls(reason=reason)
        candidates = [cuda_uuid] if cuda_uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{cuda_uuid}", f"MIG-{cuda_uuid}"]
        failures = []
        for uuid in candidates:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception as error:  # noqa: BLE001 -- NVMLError_NotFound for the other kind of UUID, ...
                failures.append(f"{uuid}: {describe(error)}")
                continue
            gpu = handle
            if uuid.startswith("MIG-"):
                try:
                    gpu = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
                except Exception:  # noqa: BLE001 -- the physical GPU's conditions then stay empty, each with its note
                    gpu = None
            return cls(pynvml, handle, gpu, uuid)
        return cls(reason=f"NVML unavailable: nvmlDeviceGetHandleByUUID found no device ({'; '.join(failures)})")

    def reading(self) -> Reading:
        return Reading(self)


@functools.cache
def for_device(device: torch.device) -> NvmlDevice:
    """The NVML view of a CUDA device, looked up once per process."""
    pynvml, reason = library()
    if pynvml is None:
        return NvmlDevice(reason=reason)
    return NvmlDevice.open(str(torch.cuda.get_device_properties(device).uuid), pynvml)


@dataclass
class Reading:
    """The queries of one record (a machine state, a snapshot, an energy counter), with a note for each that
    answered nothing. Every query returns None in that case."""

    device: NvmlDevice
    notes: list[str] = field(default_factory=list)

    def _call(self, names: tuple[str, ...], handle: Any, args: tuple) -> Any:
        """The first of `names` (current function first, its deprecated predecessor after) that answers."""
        failures = []
        for name in names:
            try:
                function = getattr(self.device.pynvml, name)
            except AttributeError:
                failures.append(f"{name}: not in this nvidia-ml-py")
                continue
            try:
                return function(*(() if handle is None else (handle,)), *args)
            except Exception as error:  # noqa: BLE001 -- NVMLError_NotSupported, _FunctionNotFound, a mismatch, ...
                failures.append(f"{name}: {describe(error)}")
        self.notes.append(" / ".join(failures))
        return None

    def system(self, *names: str) -> Any:
        """A query of the driver, no device."""
        return self._call(names, None, ())

    def own(self, *names: str, args: tuple = ()) -> Any:
        """A query of this device (the slice itself under MIG: its name, memory, processes)."""
        return self._call(names, self.device.handle, args)

    def condition(self, *names: str, args: tuple = ()) -> Any:
        """A condition of the physical GPU that this device shares (temperature, clock-event reasons, modes)."""
        if self.device.gpu is None:
            self.notes.append(f"{names[0]}: the physical GPU of this MIG slice is unknown to NVML")
            return None
        return self._call(names, self.device.gpu, args)

    def quantity(self, name: str, what: str, args: tuple = ()) -> Any:
        """A quantity of the physical GPU (energy, power, clocks): empty for a MIG slice, which has a share of it."""
        if self.device.mig:
            self.notes.append(f"{name}: " + MIG_WHOLE_GPU.format(what=what))
            return None
        return self._call((name,), self.device.handle, args)

    def constant(self, name: str) -> Any:
        return getattr(self.device.pynvml, name, None)

    def note(self) -> dict:
        """{'note': ...} naming every query that answered nothing, or {}."""
        return {"note": "; ".join(dict.fromkeys(self.notes))} if self.notes else {}
