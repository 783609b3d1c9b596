"""Energy, cost and the machine's state (bench/measuring/energy.py, bench/measuring/cost.py, bench/measuring/machine.py, bench/measuring/watch.py): the CPU
paths on this machine, RAPL's counter arithmetic on a powercap tree, and NVML on a GPU (marked cuda; its error paths
are tests/test_nvml.py's)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bench.measuring.cost import Pricing, cost_metrics
from bench.measuring.energy import EnergyCounter, EnergyLog, energy_metrics, rapl_packages, summed
from bench.measuring.machine import machine_state
from bench.measuring.watch import Watch, device_flags
from helpers import REPO

CPU = torch.device("cpu")


def test_without_a_readable_counter_energy_is_empty_and_says_why():
    if rapl_packages():
        pytest.skip("this machine exposes RAPL")
    counter = EnergyCounter.open(CPU, local_main=True)
    assert counter.read() is None and "no RAPL counter readable" in counter.reason
    log = EnergyLog(counter)
    log.window_open(), log.window_close(), log.mark()
    metrics = energy_metrics(summed([log.reading()]), counter, timed_images=100, target_row=0, resumed=False)
    assert metrics == {"energy_kwh": None, "energy_j_per_image": None, "energy_to_target_kwh": None,
                       "energy_source": counter.reason}


def write_zone(root, name: str, energy_uj: int, max_range_uj: int = 1_000_000) -> None:
    zone = root / name
    zone.mkdir(exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")


def test_rapl_packages_are_summed_across_a_wrap_around(tmp_path):
    # Two packages and a sub-zone (core) that must not count twice, as the kernel lays them out.
    write_zone(tmp_path, "intel-rapl:0", 900_000)
    write_zone(tmp_path, "intel-rapl:1", 100_000)
    write_zone(tmp_path, "intel-rapl:0:0", 500_000)
    counter = EnergyCounter.open(CPU, local_main=True, powercap=str(tmp_path))
    assert counter.available and counter.source == "RAPL package counters (2 package(s))"
    write_zone(tmp_path, "intel-rapl:0", 200_000)  # wrapped at 1 J: 0.1 J to the top, then 0.2 J
    write_zone(tmp_path, "intel-rapl:1", 600_000)  # 0.5 J
    assert counter.read() == pytest.approx(0.8)
    # Another process on the same host reads nothing and adds nothing: the host's packages count once.
    other = EnergyCounter.open(CPU, local_main=False, powercap=str(tmp_path))
    assert other.read() == 0.0 and other.key is None
    assert summed([(counter.key, [0.8, 0.3]), (None, [0.0, 0.0])]) == [0.8, 0.3]


def test_each_counter_counts_once_however_many_ranks_read_it():
    gpu0, gpu1 = "GPU-aaaa", "GPU-bbbb"
    assert summed([(gpu0, [10.0, 4.0]), (gpu0, [10.0, 4.0]), (gpu1, [5.0, 1.0])]) == [15.0, 5.0]
    assert summed([(gpu0, [10.0]), (gpu1, [None])]) == [None]  # one device unmetered: no partial sum
    metrics = energy_metrics([3.6e6, 50.0, 1.8e6], EnergyCounter(key=gpu0, source="NVML"), timed_images=100,
                             target_row=0, resumed=False)
    assert metrics == {"energy_kwh": 1.0, "energy_j_per_image": 0.5, "energy_to_target_kwh": 0.5,
                       "energy_source": "NVML"}
    resumed = energy_metrics([3.6e6, 50.0], EnergyCounter(key=gpu0, source="NVML"), 100, None, resumed=True)
    assert resumed["energy_kwh"] is None and "resumed" in resumed["energy_source"]


def test_price_per_device_kind_and_cost_per_run():
    table = Pricing(table=(("H100", 2.0), ("H100 PCIe", 1.5), ("cpu", 0.1)))
    assert table.for_device("NVIDIA H100 PCIe") == 1.5 and table.for_device("NVIDIA H100 80GB HBM3") == 2.0
    assert table.for_device("CPU: AMD EPYC") == 0.1 and table.for_device("NVIDIA A100") is None
    assert Pricing(per_hour=3.0, table=table.table).for_device("NVIDIA H100 PCIe") == 3.0  # the option wins
    cost = cost_metrics(2.0, devices=8, wall_time_s=1800, to_target_wall_s=900)
    assert cost == {"price_per_hour_usd": 2.0, "cost_usd": 8.0, "cost_to_target_usd": 4.0}


def test_a_bad_price_table_is_one_line_naming_the_option(tmp_path):
    bad = tmp_path / "prices.csv"
    bad.write_text("device,usd_per_hour\nH100,two dollars\n")
    done = subprocess.run([sys.executable, "-m", "bench.run", "--price-table", str(bad), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--price-table" in done.stderr and "line 2" in done.stderr


def test_cpu_state_is_recorded_and_cannot_flag_a_gpu():
    state = machine_state(CPU)
    assert state["cpu"]["logical_cpus"] == os.cpu_count() and state["cpu"]["memory_total_bytes"] > 2**30
    assert "gpu" not in state
    watch = Watch(CPU, {os.getpid()})
    watch.start(), watch.stop()
    for snapshot in (watch.start_state, watch.end_state):
        assert snapshot["cpu"]["freq_current_mhz"] is None or snapshot["cpu"]["freq_current_mhz"] > 0
        assert snapshot["cpu"]["load_avg_1min"] >= 0
    assert device_flags([watch.states()]) == {"device_throttled": None, "device_shared": None, "power_limited": None}


@pytest.mark.cuda
def test_nvml_energy_counter_on_a_gpu():
    device = torch.device("cuda", torch.cuda.current_device())
    counter = EnergyCounter.open(device, local_main=True)
    if not counter.available:  # pre-Volta, a MIG slice, a sandbox: a reason, not a failure
        pytest.skip(f"no NVML energy counter here: {counter.reason}")
    x = torch.randn(8192, 8192, device=device)
    for _ in range(50):
        x = x @ x.T / 8192
    torch.cuda.synchronize()
    assert counter.read() > 0 and counter.key.startswith("GPU-")


@pytest.mark.cuda
def test_nvml_state_clocks_and_processes_on_a_gpu():
    device = torch.device("cuda", torch.cuda.current_device())
    torch.ones(1, device=device)  # this process holds a context: NVML lists it
    gpu = machine_state(device)["gpu"]
    print(gpu)  # what this GPU answered, for the check's log
    assert gpu["driver_version"] and gpu["cuda_driver_version"] and gpu["compute_mode"]
    if not gpu["mig"]:
        assert gpu["power_limit_w"] > 0 and gpu["power_limit_default_w"] > 0 and gpu["power_limited"] is not None
    watch = Watch(device, {os.getpid()})
    watch.start()
    snapshot = watch.start_state["gpu"]
    print(snapshot)
    assert snapshot["temperature_c"] > 0 and isinstance(snapshot["throttle_reasons"], list)
    assert gpu["mig"] or snapshot["sm_clock_mhz"] > 0
    # In a container NVML lists host PIDs: then who else is there is unknown (None, with the note), never guessed.
    others = snapshot["other_processes"]
    assert others is None and "none of this run's" in snapshot["note"] or isinstance(others, list)
    assert all(process["pid"] != os.getpid() for process in others or [])
