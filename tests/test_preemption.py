"""Preemption for real (bench/suite/preemption.py): a signal to a running suite saves the state at the next step,
and --resume goes on from that step, not from the epoch's start. Real processes, real signals; SLURM's side (its
SIGUSR1 warning and the requeue) is tested on a real cluster in tests/test_slurm.py."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.suite.preemption import REQUEUE_EXIT
from helpers import REPO, TINY, records_in, run_bench

pytestmark = pytest.mark.slow

# 320 synthetic images, batches of 16: a dozen and more steps an epoch. Validation every 20 steps: its progress line
# at step 20 (the only "epoch 1.xx/2" line) says when the second epoch is under way: the signal's cue, nothing asserted.
# The loader may use 0.1 MB, so the run reads its training file in quasi-random order (the harder one to resume:
# tests/test_loaders.py).
ARGS = [*TINY, "--models", "resnet18", "--datasets", "mnist", "--epochs", "2", "--synthetic-size", "320", "21",
        "--eval-every", "20", "--no-inference", "--loader-memory", "0.0001"]


def signal_in_epoch_2(command: list[str], signum: int, kill_after_s: float) -> tuple[int, str]:
    """Start `command`, send `signum` once its validation line at step 20 is out, and SIGKILL it `kill_after_s`
    later if it still runs (SLURM's KillWait). Returns its exit status and output."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if re.search(r" epoch 1\.\d+/2:", line):
                process.send_signal(signum)
                break
        try:
            process.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            process.kill()
        lines += process.stdout.readlines()
        return process.wait(timeout=60), "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()


def test_a_time_limit_saves_that_step_and_resume_goes_on_from_it(tmp_path, cache_dir):
    """SIGTERM mid-epoch, SIGKILL 10 s later (a time limit), with the default checkpoint cadence (5 minutes):
    without the signal nothing would be saved before the end. SIGTERM never requeues (scancel sends it too)."""
    command = [sys.executable, "-m", "bench.run", *ARGS, "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)]
    status, output = signal_in_epoch_2(command, signal.SIGTERM, kill_after_s=10)
    assert status == REQUEUE_EXIT, output[-3000:]
    (progress_file,) = (tmp_path / "checkpoints").glob("*/progress.json")
    progress = json.loads(progress_file.read_text())
    stopped, in_epoch = progress["step"], progress["epoch_step"]
    assert stopped > 20 and progress["epoch"] == 1 and 0 < in_epoch < stopped  # inside the second epoch
    assert progress["requeues"] == 1 and progress["preempted_at"] > 0
    assert records_in(tmp_path) == []

    resumed = run_bench([*ARGS, "--resume"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (record,) = records_in(tmp_path)
    history, metrics = record.history, record.metrics
    # As an uninterrupted run: a row at step 20 and one at the end, every step trained once.
    steps_per_epoch = stopped - in_epoch
    assert [row["step"] for row in history] == [20, 2 * steps_per_epoch]
    assert [row["train_images"] for row in history] == [16 * 20, 16 * (2 * steps_per_epoch - 20)]
    assert record.status == "finished" and metrics["epochs_completed"] == 2
    assert record.config["loader_order"] == "quasi_random"
    assert metrics["requeues"] == 1 and 0 < metrics["requeue_lost_s"] < time.time() - progress["preempted_at"]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
