"""Preemption for real (bench/training/preemption.py): a signal to a running suite saves the state at the next step, and
--resume goes on from that step, not from the epoch's start. Real processes, real signals; SLURM's side (its
signal, its requeue) is in tests/test_slurm.py."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.training.preemption import REQUEUE_EXIT
from helpers import REPO, TINY, records_in, run_bench

pytestmark = pytest.mark.slow

# 640 synthetic images: 528 to train on, in batches of 16, 33 steps an epoch (a few seconds on a CPU). Validation
# every 40 steps: its line at step 40 says that the second epoch is under way.
ARGS = [*TINY, "--models", "resnet18", "--datasets", "mnist", "--epochs", "2", "--synthetic-size", "640", "21",
        "--eval-every", "40", "--no-inference"]
STEPS_PER_EPOCH = 528 // 16
ROWS = [40, 2 * STEPS_PER_EPOCH]  # an uninterrupted run's validations: every 40 steps and at the end


def signal_during_epoch_2(command: list[str], signum: int, kill_after_s: float | None = None) -> tuple[int, str]:
    """Start `command`, send `signum` once its validation line at step 40 is out (in the second epoch);
    with `kill_after_s`, SIGKILL it that long after (SLURM's KillWait). Returns its exit status and output."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={"PYTHONUNBUFFERED": "1", **__import__("os").environ})
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if re.search(r"epoch 1\.21/2:", line):
                process.send_signal(signum)
                break
        if kill_after_s is not None:
            try:
                process.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                process.kill()
        lines += process.stdout.readlines()
        return process.wait(timeout=300), "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()


def test_a_signal_mid_epoch_saves_that_step_and_resume_goes_on_from_it(tmp_path, cache_dir):
    # The default checkpoint cadence (5 minutes): without the signal, nothing would be saved before the end.
    command = [sys.executable, "-m", "bench.run", *ARGS, "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)]
    status, output = signal_during_epoch_2(command, signal.SIGUSR1)
    assert status == REQUEUE_EXIT, output[-3000:]
    (progress_file,) = (tmp_path / "checkpoints").glob("*/progress.json")
    progress = json.loads(progress_file.read_text())
    stopped = progress["step"]
    assert 40 < stopped < 2 * STEPS_PER_EPOCH and progress["epoch_step"] == stopped - STEPS_PER_EPOCH
    assert progress["requeues"] == 1 and progress["preempted_at"] > 0
    assert f"preempted: SIGUSR1 at step {stopped} of " in output and "run the same command with --resume" in output
    assert records_in(tmp_path) == []

    resumed = run_bench([*ARGS, "--resume"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch 1 and {stopped - STEPS_PER_EPOCH} step(s) of epoch 2 (step {stopped})" in resumed.stdout
    (record,) = records_in(tmp_path)
    history, metrics = record["history"], record["metrics"]
    # As an uninterrupted run: the same rows, every step trained once.
    assert [row["step"] for row in history] == ROWS
    assert [row["train_images"] for row in history] == [16 * (row - before) for row, before in zip(ROWS, [0, *ROWS])]
    assert record["status"] == "finished" and metrics["epochs_completed"] == 2
    assert metrics["requeues"] == 1 and 0 < metrics["requeue_lost_s"] < time.time() - progress["preempted_at"]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_sigterm_then_sigkill_leaves_a_state_that_resumes(tmp_path, cache_dir):
    """A time limit: SIGTERM, then SIGKILL a few seconds later (KillWait). The state saved at the step after
    SIGTERM survives the kill; SIGTERM alone never requeues (it is also what scancel sends)."""
    command = [sys.executable, "-m", "bench.run", *ARGS, "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)]
    status, output = signal_during_epoch_2(command, signal.SIGTERM, kill_after_s=10)
    assert status == REQUEUE_EXIT and "preempted: SIGTERM at step" in output and "requeue" not in output, output[-3000:]
    progress = json.loads(next((tmp_path / "checkpoints").glob("*/progress.json")).read_text())
    assert progress["step"] > 40 and progress["epoch_step"] == progress["step"] - STEPS_PER_EPOCH
