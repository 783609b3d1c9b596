"""A stand-in for nvidia-ml-py's `pynvml`, for NVML's error paths on a machine without a GPU (tests/test_nvml.py).

The functions bench/measuring/nvml.py's users call, with nvidia-ml-py 13.615's signatures, return types, units and
constants, answering as one H100 would. The test sets what goes wrong: a function in FAIL raises NVMLError (Not
Supported), one in MISSING raises it as pynvml does when the driver lacks the symbol (Function Not Found); a
function deleted from the module is one this nvidia-ml-py lacks. MIG makes the device a MIG slice; PROCESSES, REASONS
and the power limits say what NVML reports. CALLS logs (function, handle) of every call. $FAKE_NVML_FAIL names
functions to fail in a process that imports this module from PYTHONPATH.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
NVML_TEMPERATURE_GPU = 0
NVML_COMPUTEMODE_DEFAULT, NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 0, 1
NVML_COMPUTEMODE_PROHIBITED, NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 2, 3
NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE = 0, 1
nvmlTemperature_v1 = 0x100000C
nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonApplicationsClocksSetting = 0x2
nvmlClocksEventReasonSwPowerCap = 0x4
nvmlClocksEventReasonHwSlowdown = 0x8
nvmlClocksEventReasonSyncBoost = 0x10
nvmlClocksEventReasonSwThermalSlowdown = 0x20
nvmlClocksEventReasonHwThermalSlowdown = 0x40
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksEventReasonDisplayClockSetting = 0x100
nvmlClocksThrottleReasonGpuIdle = 0x1
nvmlClocksThrottleReasonSwPowerCap = 0x4
nvmlClocksThrottleReasonHwSlowdown = 0x8
nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksThrottleReasonBoardLimit = 0x200
nvmlClocksThrottleReasonReliability = 0x400

GPU_UUID = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
MIG_UUID = "MIG-9f8e7d6c-0000-1111-2222-333344445555"
FAIL: set[str] = set(os.environ.get("FAKE_NVML_FAIL", "").split())
MISSING: set[str] = set()
MIG = False
PROCESSES: list[tuple[int, int]] = []  # (pid, used bytes) of the compute processes NVML lists
REASONS = nvmlClocksEventReasonSwPowerCap
ENFORCED_LIMIT_MW, DEFAULT_LIMIT_MW = 700_000, 700_000
ENERGY_MJ = 123_456_789
CALLS: list[tuple[str, object]] = []
INITS = 0


class NVMLError(Exception):
    STRINGS = {NVML_ERROR_UNINITIALIZED: "Uninitialized", NVML_ERROR_NOT_SUPPORTED: "Not Supported",
               NVML_ERROR_NOT_FOUND: "Not Found", NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self.STRINGS[self.value]


@dataclass(frozen=True)
class Handle:  # pynvml's c_nvmlDevice_t pointer
    uuid: str


@dataclass
class Memory:  # c_nvmlMemory_t
    total: int
    free: int
    used: int


@dataclass
class ProcessInfo:  # nvmlFriendlyObject of c_nvmlProcessInfo_v3_t
    pid: int
    usedGpuMemory: int | None
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


PHYSICAL = Handle(GPU_UUID)


def _enter(name: str, handle: object = None) -> None:
    CALLS.append((name, handle))
    if name in MISSING:
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    if name in FAIL:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


def nvmlInit():
    global INITS
    _enter("nvmlInit")
    INITS += 1


def nvmlSystemGetDriverVersion():
    _enter("nvmlSystemGetDriverVersion")
    return "590.48.01"


def nvmlSystemGetCudaDriverVersion():
    _enter("nvmlSystemGetCudaDriverVersion")
    return 13000


def nvmlDeviceGetHandleByUUID(uuid):
    _enter("nvmlDeviceGetHandleByUUID")
    if uuid == (MIG_UUID if MIG else GPU_UUID):
        return Handle(uuid)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migDevice):
    _enter("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)
    return PHYSICAL


def nvmlDeviceGetName(handle):
    _enter("nvmlDeviceGetName", handle)
    return "NVIDIA H100 80GB HBM3 MIG 1g.10gb" if handle.uuid.startswith("MIG-") else "NVIDIA H100 80GB HBM3"


def nvmlDeviceGetEnforcedPowerLimit(handle):
    _enter("nvmlDeviceGetEnforcedPowerLimit", handle)
    return ENFORCED_LIMIT_MW


def nvmlDeviceGetPowerManagementDefaultLimit(handle):
    _enter("nvmlDeviceGetPowerManagementDefaultLimit", handle)
    return DEFAULT_LIMIT_MW


def nvmlDeviceGetMaxClockInfo(handle, type):
    _enter("nvmlDeviceGetMaxClockInfo", handle)
    return {NVML_CLOCK_SM: 1980, NVML_CLOCK_MEM: 2619}[type]


def nvmlDeviceGetClockInfo(handle, type):
    _enter("nvmlDeviceGetClockInfo", handle)
    return {NVML_CLOCK_SM: 1755, NVML_CLOCK_MEM: 2619}[type]


def nvmlDeviceGetMemoryInfo(handle, version=None):
    _enter("nvmlDeviceGetMemoryInfo", handle)
    total = 10 * 2**30 if handle.uuid.startswith("MIG-") else 80 * 2**30
    return Memory(total=total, free=total - 2**30, used=2**30)


def nvmlDeviceGetComputeMode(handle):
    _enter("nvmlDeviceGetComputeMode", handle)
    return NVML_COMPUTEMODE_EXCLUSIVE_PROCESS


def nvmlDeviceGetMigMode(device):
    _enter("nvmlDeviceGetMigMode", device)
    mode = NVML_DEVICE_MIG_ENABLE if MIG else NVML_DEVICE_MIG_DISABLE
    return [mode, mode]


def nvmlDeviceGetTemperatureV(handle, sensor, version=nvmlTemperature_v1):
    _enter("nvmlDeviceGetTemperatureV", handle)
    return 41


def nvmlDeviceGetTemperature(handle, sensor):
    _enter("nvmlDeviceGetTemperature", handle)
    return 41


def nvmlDeviceGetPowerUsage(handle):
    _enter("nvmlDeviceGetPowerUsage", handle)
    return 312_500


def nvmlDeviceGetCurrentClocksEventReasons(handle):
    _enter("nvmlDeviceGetCurrentClocksEventReasons", handle)
    return REASONS


def nvmlDeviceGetCurrentClocksThrottleReasons(handle):
    _enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
    return REASONS


def nvmlDeviceGetComputeRunningProcesses(handle):
    _enter("nvmlDeviceGetComputeRunningProcesses", handle)
    return [ProcessInfo(pid, used) for pid, used in PROCESSES]


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    _enter("nvmlDeviceGetGraphicsRunningProcesses", handle)
    return []


def nvmlDeviceGetTotalEnergyConsumption(handle):
    _enter("nvmlDeviceGetTotalEnergyConsumption", handle)
    return ENERGY_MJ
