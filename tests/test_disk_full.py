"""A disk that fills up, for real: a small tmpfs mounted for the test (root only; skipped elsewhere). Each command
stops with one line naming the folder, exits non-zero, and leaves nothing half-written: what was whole stays whole."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import TINY, records_in, run_bench, run_module

pytestmark = pytest.mark.slow

MIB = 2**20


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_mib) -> a fresh folder on a tmpfs of that size; `resize(size_mib)` grows it (a disk cleaned up)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted: list[Path] = []

    def mount(size_mib: float) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_mib * 1024)}k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    def resize(folder: Path, size_mib: float) -> None:
        subprocess.run(["mount", "-o", f"remount,size={int(size_mib * 1024)}k", str(folder)], check=True)

    mount.resize = resize
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def one_line_about(stderr: str, folder: Path) -> None:
    """The error is the last line of stderr, names a folder under `folder`, and no traceback came before it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.splitlines()[-1]
    assert str(folder) in last and "no space left" in last and "nothing half-written" in last, last


def test_a_report_on_a_full_disk_is_one_line_and_the_records_stay_whole(smoke_suite, small_disk):
    runs = sorted((smoke_suite.results / "runs").glob("*.json"))
    disk = small_disk(sum(path.stat().st_size for path in runs) / MIB + 0.25)  # the records and a quarter MiB
    shutil.copytree(smoke_suite.results / "runs", disk / "runs")
    done = run_module("bench.report", "--results-dir", str(disk))
    assert done.returncode == 1
    one_line_about(done.stderr, disk)  # disk/plots, disk/tables or disk itself: whichever filled first
    assert [path.read_bytes() for path in sorted((disk / "runs").glob("*.json"))] == [p.read_bytes() for p in runs]
    assert not (disk / "REPORT.md").exists() and leftovers(disk) == []


def test_a_checkpoint_on_a_full_disk_stops_the_suite_and_the_last_whole_one_resumes(small_disk, cache_dir):
    # One checkpoint of resnet18 is ~86 MiB (weights and momentum): the first fits, the second does not.
    disk = small_disk(120)
    args = [*TINY, "--models", "resnet18", "--datasets", "mnist", "--epochs", "3", "--checkpoint-minutes", "0"]
    full = run_bench(args, disk, cache_dir)
    assert full.returncode == 1
    one_line_about(full.stderr, disk / "checkpoints")
    (run,) = (disk / "checkpoints").iterdir()
    progress = json.loads((run / "progress.json").read_text())
    assert progress["epoch"] == 1 and sorted(path.name for path in run.iterdir()) == sorted(
        ["progress.json", progress["state"]])  # the second state, half-written, is gone
    assert records_in(disk) == [] and leftovers(disk) == []

    small_disk.resize(disk, 400)  # space freed: the run goes on from its last whole checkpoint
    resumed = run_bench([*args, "--resume"], disk, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (record,) = records_in(disk)
    assert record.status == "finished" and record.metrics["epochs_completed"] == 3
    assert record.history[: len(progress["history"])] == progress["history"]  # went on from epoch 1



def test_an_encode_that_cannot_fit_stops_before_writing_with_the_size_it_needs(small_disk):
    disk = small_disk(8)  # synthetic CIFAR-10's three splits take about 30 MB
    done = run_module("data.prepare", "--datasets", "cifar10", "--synthetic", "--cache-dir", str(disk))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {disk}: encoding cifar10-synthetic-2400x400 \(train, val, test\) needs about "
                        r"0\.0[3-5] GB and 0\.01 GB are free there; .* nothing was written", line), line
    assert sorted(path.name for path in disk.iterdir()) == ["cifar10-synthetic-2400x400.lock"]  # the lock stays
