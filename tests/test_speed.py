"""Speed sweeps and the overhead benchmark, run for real on the CPU (tiny sizes; no timing asserted)."""
from __future__ import annotations

import json
import re

import pytest

from bench.measuring.maxbatch import search
from bench.results.records import load_sweeps, read_record
from bench.results.schema import SweepRecord
from helpers import plugin_env, run_module

pytestmark = pytest.mark.slow  # each test starts the real CLI in a subprocess


def sweeps_in(results) -> list[SweepRecord]:
    records, unreadable = load_sweeps(results)
    assert not unreadable, unreadable
    return records


def test_sweep_over_models_precisions_and_modes_writes_a_record_per_point(tmp_path):
    done = run_module("bench.speed", "--models", "resnet18", "inception_v1", "--precisions", "no", "bf16",
                      "--batch-sizes", "2", "--channels-last", "on", "--modes", "train", "infer",
                      "--warmup", "1", "--steps", "1", "--windows", "2", "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = sweeps_in(tmp_path)
    assert len(records) == 2 * 2 * 2
    for record in records:
        assert record.status == "ok"
        assert record.images_per_s > 0 and record.step_time_ms > 0 and record.mfu is None  # GPUs only
        assert record.peak_mem_allocated_bytes > 0 and len(record.window_step_times_ms) == 2
        assert record.channels_last is True and record.device
    assert {(r.model, r.precision, r.batch_size, r.mode) for r in records} == {
        (m, p, 2, mode) for m in ("resnet18", "inception_v1") for p in ("no", "bf16") for mode in ("train", "infer")}
    report = run_module("bench.report", "--results-dir", str(tmp_path))
    assert report.returncode == 0, report.stderr
    plots = list((tmp_path / "plots").glob("throughput_*.png"))
    assert plots and all(p.stat().st_size > 0 for p in plots)
    assert plots[0].name in (tmp_path / "REPORT.md").read_text()


def test_out_of_memory_batch_is_recorded_and_the_sweep_goes_on(tmp_path):
    # A 1 GiB cap on the process makes batch 2048 fail to allocate for real; 2 and 4 still fit.
    done = run_module("bench.speed", "--models", "resnet18", "--precisions", "no", "--batch-sizes", "2", "2048", "4",
                      "--channels-last", "off", "--modes", "train", "--warmup", "1", "--steps", "1", "--windows", "1",
                      "--memory-limit-gb", "1", "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    status = {record.batch_size: record.status for record in sweeps_in(tmp_path)}
    assert status == {2: "ok", 2048: "oom", 4: "ok"}


def test_max_batch_search_doubles_then_bisects_and_never_passes_off_a_smaller_batch():
    tried = []

    def probe(batch: int) -> int | None:  # stands for a device on which batches above 13 run out of memory
        tried.append(batch)
        return 1000 * batch if batch <= 13 else None

    found = search(probe, cap=64)
    assert (found.batch, found.limit) == (13, "oom") and tried == [1, 2, 4, 8, 16, 12, 14, 13]
    assert search(probe, cap=8).limit == "cap" and search(probe, cap=8).batch == 8
    # With a memory budget, a batch predicted beyond it (1000 bytes an image) is not tried at all.
    tried.clear()
    budgeted = search(probe, cap=64, budget_bytes=5500)
    assert (budgeted.batch, budgeted.limit) == (5, "memory (predicted)") and max(tried) == 5


def test_find_max_batch_on_a_cpu_stops_before_the_hosts_memory_and_says_so(tmp_path):
    # A quarter GiB beyond what the process uses: a few images of resnet18's training fit, thousands would not.
    done = run_module("bench.speed", "--find-max-batch", "--batch-cap", "4096", "--memory-limit-gb", "0.25",
                      "--models", "resnet18", "--precisions", "no", "--channels-last", "off", "--warmup", "1",
                      "--steps", "1", "--windows", "1", "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (tmp_path / "speed").glob("maxbatch_*.json")
    record = read_record(path, SweepRecord)
    found = record.max_batch
    assert record.search == "max-batch" and found["limit"] == "memory (predicted)" and found["cap"] == 4096
    assert record.batch_size == found["batch"] >= 1 and record.status == "ok"  # the batch found is the one timed
    predicted = [probe["batch"] for probe in found["probes"] if probe["status"] == "predicted"]
    assert predicted and found["batch"] < min(predicted)  # never tried: no OOM killer woken
    report = run_module("bench.report", "--results-dir", str(tmp_path))
    assert report.returncode == 0, report.stderr
    assert "memory (predicted)" in (tmp_path / "REPORT.md").read_text()  # beside its peak memory


FAILING_MODEL = '''
from torch import nn

from models import register_model


class FailsAtBatchThree(nn.Module):
    """Stands for a point the compiler cannot handle: an error that is not out of memory, at one batch size."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, num_classes))

    def forward(self, x):
        if x.shape[0] == 3:
            raise RuntimeError("triton: failed to compile kernel")
        return self.body(x)


@register_model()
def fails_at_batch_three(in_channels: int, num_classes: int) -> nn.Module:
    return FailsAtBatchThree(in_channels, num_classes)
'''


def test_a_failing_point_is_recorded_as_an_error_and_the_sweep_goes_on(tmp_path):
    done = run_module("bench.speed", "--plugin", "failing", "--models", "fails_at_batch_three", "--precisions", "no",
                      "--batch-sizes", "3", "2", "--channels-last", "off", "--modes", "train", "--warmup", "1",
                      "--steps", "1", "--windows", "1", "--results-dir", str(tmp_path),
                      env=plugin_env(tmp_path, "failing", FAILING_MODEL))
    assert done.returncode == 1, done.stderr[-3000:]  # the sweep ran to its end, and says a point failed
    records = {record.batch_size: record for record in sweeps_in(tmp_path)}
    assert records[3].status == "error" and records[3].error == "RuntimeError: triton: failed to compile kernel"
    assert records[2].status == "ok" and records[2].images_per_s > 0
    assert "Traceback" in done.stderr  # the whole story stays in the log


def test_sweep_through_the_ffcv_loader(tmp_path):
    done = run_module("bench.speed", "--models", "resnet18", "--dataset", "mnist", "--precisions", "no",
                      "--batch-sizes", "8", "--channels-last", "off", "--modes", "train", "--data", "ffcv",
                      "--synthetic-source", "--cache-dir", str(tmp_path / "cache"), "--warmup", "1", "--steps", "2",
                      "--windows", "1", "--profile", "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = sweeps_in(tmp_path)
    assert record.data == "ffcv" and record.in_channels == 1 and record.images_per_s > 0
    (trace,) = (tmp_path / "profiles").glob("speed-*/trace.json")
    assert json.loads(trace.read_text())["traceEvents"]  # a Chrome/Perfetto trace
    (top_ops,) = (tmp_path / "profiles").glob("speed-*/top_ops.txt")  # the top operators, as a table
    assert top_ops.read_text().count("\n") > 5


def test_overhead_benchmark_prints_both_throughputs_and_their_ratio():
    done = run_module("bench.overhead", "--model", "resnet18", "--dataset", "mnist", "--batch-size", "4",
                      "--precision", "no", "--steps", "2", "--rounds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"harness ([\d,.]+) img/s, bare ([\d,.]+) img/s, ratio ([\d.]+)", done.stdout)
    assert match, done.stdout
    harness, bare, ratio = (float(group.replace(",", "")) for group in match.groups())
    # Printed to one decimal: at a few img/s (a loaded machine) the rounding alone moves the ratio by several %.
    assert harness > 0 and bare > 0 and ratio == pytest.approx(harness / bare, rel=0.1, abs=0.01)
    assert len(re.findall(r"^round \d", done.stdout, flags=re.M)) == 2
