"""NVML never breaks a run (bench/measuring/nvml.py and its users machine.py, watch.py, energy.py): every call that
raises or is missing leaves its fields empty and a note naming it; MIG slices, container PIDs, the power cap and
slowdowns are told apart. NVML itself needs a GPU: these tests give the real code tests/fake_nvml/pynvml.py, a
stand-in with nvidia-ml-py's signatures whose failures each test chooses (a GPU run checks the real one,
tests/test_machine.py)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import gpu_modes
from bench.measuring.energy import STOPPED, EnergyCounter, EnergyLog, energy_metrics, summed
from bench.measuring.machine import gpu_state
from bench.measuring.nvml import NvmlDevice
from bench.measuring.watch import device_flags, gpu_snapshot
from helpers import REPO

FAKE = Path(__file__).with_name("fake_nvml")
OWN_PID, HOST_PID, OTHER_PID = 4242, 981_234, 5151


@pytest.fixture
def fake(monkeypatch):
    """A fresh stand-in pynvml, initialised, whose GPU runs this process (OWN_PID) alone."""
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE / "pynvml.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    module.nvmlInit()
    module.PROCESSES = [(OWN_PID, 2**30)]
    return module


def everything(fake) -> dict:
    """What a run records through NVML: the machine's GPU state, a snapshot and a whole energy counter's life."""
    device = NvmlDevice.open((fake.MIG_UUID if fake.MIG else fake.GPU_UUID).split("-", 1)[1], fake)  # as torch gives it
    counter = EnergyCounter.nvml(device)
    log = EnergyLog(counter)
    log.window_open()
    fake.ENERGY_MJ += 5_000
    log.window_close()
    state, snapshot = gpu_state(device), gpu_snapshot(device, {OWN_PID})
    return {"state": state, "snap": snapshot, "counter": counter, "log": log,
            "flags": device_flags([{"start": {"gpu": snapshot}, "end": {"gpu": snapshot}}])}


def fields(recorded: dict) -> dict[str, object]:
    return {**{f"state.{k}": v for k, v in recorded["state"].items()},
            **{f"snap.{k}": v for k, v in recorded["snap"].items()}}


def test_a_healthy_gpu_fills_every_field(fake):
    recorded = everything(fake)
    values = fields(recorded)
    assert not [name for name, value in values.items() if value is None], values
    assert "state.note" not in values and "snap.note" not in values
    assert recorded["state"]["gpu_uuid"] == fake.GPU_UUID and recorded["state"]["cuda_driver_version"] == "13.0"
    assert recorded["state"]["compute_mode"] == "exclusive_process" and recorded["state"]["mig_mode"] == "disabled"
    assert recorded["counter"].key == fake.GPU_UUID and recorded["log"].window_j == pytest.approx(5.0)
    assert recorded["flags"] == {"device_throttled": False, "device_shared": False, "power_limited": False}


# Each NVML call, and the fields it alone fills (a call whose fields another call can fill leaves none empty).
CALLS = {
    "nvmlSystemGetDriverVersion": {"state.driver_version"},
    "nvmlSystemGetCudaDriverVersion": {"state.cuda_driver_version"},
    "nvmlDeviceGetName": {"state.gpu_name"},
    "nvmlDeviceGetEnforcedPowerLimit": {"state.power_limit_w", "state.power_limited", "snap.power_limit_w",
                                        "snap.power_limited"},
    "nvmlDeviceGetPowerManagementDefaultLimit": {"state.power_limit_default_w", "state.power_limited",
                                                 "snap.power_limit_default_w", "snap.power_limited"},
    "nvmlDeviceGetMaxClockInfo": {"state.max_sm_clock_mhz", "state.max_memory_clock_mhz"},
    "nvmlDeviceGetMemoryInfo": {"state.memory_total_bytes"},
    "nvmlDeviceGetComputeMode": {"state.compute_mode"},
    "nvmlDeviceGetMigMode": {"state.mig_mode"},
    "nvmlDeviceGetClockInfo": {"snap.sm_clock_mhz", "snap.memory_clock_mhz"},
    "nvmlDeviceGetPowerUsage": {"snap.power_w"},
    "nvmlDeviceGetComputeRunningProcesses": {"snap.other_processes"},  # the list that holds ours
    "nvmlDeviceGetGraphicsRunningProcesses": set(),
    "nvmlDeviceGetTotalEnergyConsumption": {"energy"},
    "nvmlDeviceGetTemperatureV nvmlDeviceGetTemperature": {"snap.temperature_c"},
    "nvmlDeviceGetCurrentClocksEventReasons nvmlDeviceGetCurrentClocksThrottleReasons": {"snap.throttle_reasons"},
}


@pytest.mark.parametrize("how", ["raises", "missing in the driver", "missing in nvidia-ml-py"])
@pytest.mark.parametrize("calls", list(CALLS))
def test_a_failing_nvml_call_leaves_its_fields_empty_and_a_note_naming_it(fake, calls, how):
    for name in calls.split():
        if how == "raises":
            fake.FAIL.add(name)
        elif how == "missing in the driver":
            fake.MISSING.add(name)
        else:
            delattr(fake, name)
    recorded = everything(fake)  # raises nothing
    values = fields(recorded)
    empty = {name for name, value in values.items() if value is None}
    assert empty == CALLS[calls] - {"energy"}
    notes = recorded["state"].get("note", "") + recorded["snap"].get("note", "")
    assert all(name in notes for name in calls.split() if name != "nvmlDeviceGetTotalEnergyConsumption")
    counter = recorded["counter"]
    if "energy" in CALLS[calls]:
        assert not counter.available and "nvmlDeviceGetTotalEnergyConsumption" in counter.reason
        metrics = energy_metrics(summed([recorded["log"].reading()]), counter, 100, None, resumed=False)
        assert metrics["energy_kwh"] is None and metrics["energy_source"] == counter.reason
    else:
        assert counter.available and recorded["log"].window_j == pytest.approx(5.0)


def test_no_handle_for_the_uuid_leaves_everything_empty_with_one_reason(fake):
    fake.FAIL.add("nvmlDeviceGetHandleByUUID")
    recorded = everything(fake)
    reason = recorded["state"]["note"]
    assert reason.startswith("NVML unavailable: nvmlDeviceGetHandleByUUID found no device")
    assert f"{fake.GPU_UUID}: NVMLError: Not Supported" in reason and "MIG-0a1b2c3d-" in reason
    assert recorded["state"] == recorded["snap"] == {"note": reason} and recorded["counter"].reason == reason
    assert recorded["flags"] == {"device_throttled": None, "device_shared": None, "power_limited": None}


def test_the_current_functions_come_first_and_their_predecessors_stand_in(fake):
    everything(fake)
    called = [name for name, _ in fake.CALLS]
    assert "nvmlDeviceGetTemperatureV" in called and "nvmlDeviceGetTemperature" not in called
    assert "nvmlDeviceGetCurrentClocksEventReasons" in called and "nvmlDeviceGetCurrentClocksThrottleReasons" not in called
    del fake.nvmlDeviceGetTemperatureV  # an older nvidia-ml-py
    fake.MISSING.add("nvmlDeviceGetCurrentClocksEventReasons")  # an older driver
    snapshot = everything(fake)["snap"]
    assert snapshot["temperature_c"] == 41 and snapshot["throttle_reasons"] == ["sw_power_cap"]
    assert "note" not in snapshot


def test_a_mig_slice_leaves_the_whole_gpus_energy_power_and_clocks_empty(fake):
    fake.MIG = True
    recorded = everything(fake)
    state, snapshot = recorded["state"], recorded["snap"]
    assert state["gpu_uuid"] == fake.MIG_UUID and state["mig"] is True and state["mig_mode"] == "enabled"
    assert state["gpu_name"].endswith("MIG 1g.10gb") and state["memory_total_bytes"] == 10 * 2**30  # the slice's own
    whole_gpu = ["power_limit_w", "power_limit_default_w", "power_limited", "max_sm_clock_mhz", "max_memory_clock_mhz"]
    assert [state[name] for name in whole_gpu] == [None] * 5
    assert [snapshot[name] for name in ("sm_clock_mhz", "memory_clock_mhz", "power_w", "power_limited")] == [None] * 4
    assert "nvmlDeviceGetPowerUsage: not read on a MIG slice: the whole physical GPU's power" in snapshot["note"]
    assert snapshot["note"].count("nvmlDeviceGetClockInfo") == 1  # one note for both clocks
    assert "not read on a MIG slice: the whole physical GPU's energy counter" in recorded["counter"].reason
    # Conditions of the physical GPU that slow the slice too are read from the physical GPU.
    assert snapshot["temperature_c"] == 41 and snapshot["throttle_reasons"] == ["sw_power_cap"]
    assert state["compute_mode"] == "exclusive_process" and snapshot["other_processes"] == []
    handles = {name: handle for name, handle in fake.CALLS}
    assert handles["nvmlDeviceGetCurrentClocksEventReasons"] == handles["nvmlDeviceGetMigMode"] == fake.PHYSICAL
    assert handles["nvmlDeviceGetComputeRunningProcesses"].uuid == fake.MIG_UUID


@pytest.mark.parametrize("listed, shared", [
    ([(HOST_PID, 2**30)], None),  # a container: NVML lists the host's PID of our process, not ours
    ([], None),  # NVML lists nothing it can show us
    ([(OWN_PID, 2**30), (OTHER_PID, 2**20)], True),
    ([(OWN_PID, 2**30)], False),
])
def test_a_gpu_is_shared_only_when_nvml_lists_our_own_processes_beside_others(fake, listed, shared):
    fake.PROCESSES = listed
    recorded = everything(fake)
    assert recorded["flags"]["device_shared"] is shared
    others = recorded["snap"]["other_processes"]
    if shared is None:
        assert others is None and "none of this run's (in a container NVML gives host PIDs" in recorded["snap"]["note"]
    else:
        assert others == ([{"pid": OTHER_PID, "used_memory_bytes": 2**20}] if shared else [])


@pytest.mark.parametrize("reasons, labels, throttled", [
    (["SwPowerCap", "GpuIdle"], ["gpu_idle", "sw_power_cap"], False),  # at the power cap under load: normal
    (["SwPowerCap", "HwThermalSlowdown"], ["sw_power_cap", "hw_thermal_slowdown"], True),
    (["SwThermalSlowdown"], ["sw_thermal_slowdown"], True),
    (["HwSlowdown"], ["hw_slowdown"], True),
    (["HwPowerBrakeSlowdown"], ["hw_power_brake_slowdown"], True),
    (["SyncBoost", "DisplayClockSetting"], ["sync_boost", "display_clock_setting"], False),
])
def test_every_clock_event_reason_is_recorded_and_only_a_slowdown_throttles(fake, reasons, labels, throttled):
    fake.REASONS = sum(getattr(fake, f"nvmlClocksEventReason{name}") for name in reasons)
    recorded = everything(fake)
    assert recorded["snap"]["throttle_reasons"] == labels
    assert recorded["flags"]["device_throttled"] is throttled


def test_a_reason_nvml_adds_later_is_kept_as_its_bit(fake):
    fake.REASONS = fake.nvmlClocksThrottleReasonBoardLimit | 0x1000
    assert everything(fake)["snap"]["throttle_reasons"] == ["board_limit", "0x1000"]


def test_a_power_limit_below_the_cards_default_is_flagged_beside_both_limits(fake):
    fake.ENFORCED_LIMIT_MW = 500_000
    recorded = everything(fake)
    assert (recorded["state"]["power_limit_w"], recorded["state"]["power_limit_default_w"]) == (500, 700)
    assert recorded["state"]["power_limited"] is True and recorded["flags"]["power_limited"] is True


def test_an_energy_counter_that_stops_answering_mid_run_gives_no_partial_sum(fake):
    counter = EnergyCounter.nvml(NvmlDevice.open(fake.GPU_UUID, fake))
    log = EnergyLog(counter)
    log.window_open()
    fake.FAIL.add("nvmlDeviceGetTotalEnergyConsumption")
    log.window_close(), log.mark()
    metrics = energy_metrics(summed([log.reading()]), counter, timed_images=100, target_row=0, resumed=False)
    assert metrics == {"energy_kwh": None, "energy_j_per_image": None, "energy_to_target_kwh": None,
                       "energy_source": STOPPED}


@pytest.mark.parametrize("fail, reason", [("", None), ("nvmlInit", "NVML unavailable: nvmlInit failed (NVMLError: "
                                                                    "Not Supported)")])
def test_nvml_is_imported_and_initialised_once_per_process(fail, reason):
    # The module pynvml on PYTHONPATH is the stand-in; a failing nvmlInit is a reason, not an exception.
    script = ("import pynvml; from bench.measuring.nvml import library\n"
              "first, second = library(), library()\n"
              "assert first == second and first[0] in (pynvml, None)\n"
              "print(pynvml.INITS, first[1])")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE), str(REPO)]),
                               "FAKE_NVML_FAIL": fail})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 1) == ["0" if fail else "1", f"{reason}\n"]


def test_the_checks_probe_names_compute_mode_and_mig(fake):
    assert gpu_modes(NvmlDevice.open(fake.GPU_UUID, fake)) == "compute mode exclusive_process, MIG mode disabled (a whole GPU)"
    fake.MIG = True
    fake.FAIL.add("nvmlDeviceGetComputeMode")
    line = gpu_modes(NvmlDevice.open(fake.MIG_UUID, fake))
    assert line.startswith("compute mode unknown, MIG mode enabled (this device is a MIG slice); NVML did not answer: ")
    assert "nvmlDeviceGetComputeMode: NVMLError: Not Supported" in line and "\n" not in line
    assert gpu_modes(NvmlDevice(reason="NVML unavailable: x")) == "compute mode and MIG unknown: NVML unavailable: x"
