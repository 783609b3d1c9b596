"""Preemption that loses at most a step: a signal only sets a flag, and the processes agree at the next step boundary to
save the state there and stop (why, and which signal does what: docs/design.md).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
from accelerate import Accelerator

from bench.measuring.measure import all_reduce_max_

REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped to be run again; the state is saved
AGREE_EVERY = 10  # steps between the processes' all-reduce of the flag (several processes only)
# Each signal's flag; the processes agree on the largest: a warning to requeue beats a plain stop.
SIGNALS = {signal.SIGTERM: 1, signal.SIGUSR2: 1, signal.SIGUSR1: 2}


class Preempted(Exception):
    """The suite stopped at a step boundary after a signal; the run's state at that step is saved."""

    def __init__(self, signum: int, run_id: str, step: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step} of {run_id}: state saved")
        self.signum, self.run_id, self.step = signum, run_id, step


class Preemption:
    """One process's view of the signals: `received_at` the first one's time; `due` the agreed decision."""

    def __init__(self) -> None:
        self.flag = 0  # SIGNALS' value of the strongest signal received
        self.received_at: float | None = None
        self.agreed: int | None = None  # the signal all processes agreed to stop on

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self.note)

    def note(self, signum: int, frame) -> None:
        self.flag = max(self.flag, SIGNALS[signum])
        self.received_at = self.received_at or time.time()

    def due(self, accelerator: Accelerator, step: int) -> bool:
        """At a step boundary: whether every process stops here (a collective every AGREE_EVERY steps when there are
        several, so all ranks must call it at the same steps)."""
        if accelerator.num_processes == 1:
            flag = self.flag
        elif step % AGREE_EVERY:
            return False
        else:
            flag = int(all_reduce_max_(torch.tensor([self.flag], device=accelerator.device)).item())
        if flag:
            self.agreed = next(signum for signum, value in SIGNALS.items() if value == flag)  # SIGTERM for 1
            self.received_at = self.received_at or time.time()  # another rank's signal: stopping starts now
        return bool(flag)


def slurm_job() -> str | None:
    """The job id that `scontrol requeue` takes: an array task as ARRAYJOB_TASK, else SLURM_JOB_ID; None outside
    SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue(preempted: Preempted) -> str | None:
    """Requeue the job where the signal asked for it (SIGUSR1 under SLURM): None when done or not asked, else why
    `scontrol requeue` failed."""
    job = slurm_job()
    if preempted.signum != signal.SIGUSR1 or not job:
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return (done.stderr.strip() or f"exit {done.returncode}") if done.returncode else None


def stop_line(preempted: Preempted, requeue_error: str | None) -> str:
    """What happens next, in one line, once `requeue` has done its part."""
    job = slurm_job()
    if preempted.signum != signal.SIGUSR1 or not job:
        return f"preempted: {preempted}; run the same command with --resume to go on from that step"
    if requeue_error is None:
        return f"preempted: {preempted}; requeued as job {job}, which goes on from that step with --resume"
    return f"preempted: {preempted}; scontrol requeue {job} failed ({requeue_error}): submit the job again with --resume"
