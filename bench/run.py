"""The benchmark suite: `accelerate launch bench/run.py [options]` (or `python -m bench.run`).

Parses the command line into runs, trains and measures each one, writes one record per run, and
ends with the comparison tables. A run that diverges or runs out of memory is recorded as such and
the suite goes on; the exit status is non-zero when any run did not finish. SIGUSR1 or SIGTERM stops the
suite at the next step with the run's state saved there (bench/training/preemption.py): exit status 75, and under
SLURM (SIGUSR1) the job requeued to go on with --resume.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object

from bench.measuring.environment import cpu_launch_error, num_machines, use_cpu
from bench.report import write_report
from bench.results import records
from bench.results.tracking import tracker_dir, tracker_error
from bench.suite.config import RunConfig, SuiteConfig, collective_timeout, parse_suite
from bench.suite.plan import batch_warnings, dry_run_table, suite_line
from bench.training.preemption import REQUEUE_EXIT, Preempted, Preemption, stop_line
from bench.training.runtime import announce, configure_backends, cpu_has_native_bf16, precision_error
from bench.training.train import train_run
from data.errors import DataError
from common.files import DiskFull


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_suite(argv)
    except DiskFull as error:  # a results, checkpoint or cache folder filled up: what was written is whole
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        return 1


def run_suite(argv: Sequence[str] | None) -> int:
    started = time.time()
    preemption = Preemption()
    preemption.install()  # from the start: a signal during set-up stops the suite at its first step
    if error := cpu_launch_error():
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        return 2
    cpu = use_cpu()
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=collective_timeout(argv)))
    gpu = state.device.type == "cuda"
    suite = parse_suite(argv, gpu_available=gpu, num_processes=state.num_processes,
                        num_machines=num_machines(state.num_processes),
                        native_bf16=gpu or cpu_has_native_bf16())
    precision = suite.precision
    if error := precision_error(precision, state.device):
        print(f"bench/run.py: error: --precision {precision}: {error}", file=sys.stderr)
        return 2
    if suite.log_with and (error := tracker_error(list(suite.log_with))):
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        return 2
    if suite.dry_run:
        return dry_run(suite, state)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu, log_with=list(suite.log_with) or None,
                              project_dir=str(tracker_dir(suite.results_dir)))
    for note in suite.notes:
        announce(accelerator, note)
    if suite.shard:
        announce(accelerator, f"shard {suite.shard[0]}/{suite.shard[1]}")
        if not suite.runs:  # an array with more tasks than the suite has runs: the spare tasks succeed idle
            announce(accelerator, "no runs in this part: the suite has fewer runs than parts; nothing to do")
            accelerator.end_training()
            return 0
    announce(accelerator, suite_line(suite, accelerator.num_processes, accelerator.device.type))
    for line in (*batch_warnings(suite.runs), *suite.loader_notes):
        announce(accelerator, line)
    configure_backends(accelerator.device)
    if suite.resume and (error := resume_mismatch(suite.results_dir, suite.runs)):
        accelerator.print(f"bench/run.py: error: {error}", file=sys.stderr)  # every machine says why it stops
        accelerator.end_training()
        return 2

    outcomes: list[tuple[str, str]] = []
    for cfg in suite.runs:
        done = records.existing_record(suite.results_dir, cfg.run_id) if suite.resume else None
        if done is not None and done["status"] in records.FINAL_STATUSES:
            announce(accelerator, f"skip {cfg.run_id}: already recorded ({done['status']})")
            outcomes.append((cfg.run_id, done["status"]))
            continue
        announce(accelerator, f"run {cfg.run_id}")
        try:
            record = train_run(cfg, accelerator, suite.results_dir, suite.cache_dir, resume=suite.resume,
                               keep_checkpoints=suite.keep_checkpoints, profile=suite.profile, preemption=preemption)
        except Preempted as preempted:  # the state at that step is saved; the runs after it wait for the resume
            if accelerator.is_main_process:
                print(stop_line(preempted), flush=True)
            accelerator.end_training()
            return REQUEUE_EXIT
        except DataError as error:
            accelerator.print(f"bench/run.py: error: {error}", file=sys.stderr)  # every machine says why it stops
            accelerator.end_training()
            return 2
        except DiskFull:
            raise  # not the run's fault: the suite cannot go on writing
        except Exception as error:  # a broken run is a result; the suite goes on
            if accelerator.num_processes > 1 and peer_lost(error):
                leave_for_lost_peer(accelerator.process_index, cfg.run_id, error)
            announce(accelerator, f"run {cfg.run_id} failed: {error!r}")
            record = {"run_id": cfg.run_id, "status": "failed", "error": repr(error),
                      "traceback": traceback.format_exc(), "model": cfg.model, "dataset": cfg.dataset, "metrics": {}}
        if accelerator.is_main_process:
            records.write_record(suite.results_dir, record)
        announce(accelerator, f"{record['status']}: {cfg.run_id}"
                          + (f" ({record['error']})" if record.get("error") else ""))
        outcomes.append((cfg.run_id, record["status"]))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        report = write_report(suite.results_dir)
        print(report.summary_markdown)
    failed = [(run_id, status) for run_id, status in outcomes if status != "finished"]
    wall = time.time() - started
    for run_id, status in failed:
        announce(accelerator, f"{status}: {run_id}")
    announce(accelerator, f"suite done: {len(outcomes) - len(failed)} finished, {len(failed)} not finished, "
                      f"{wall:,.1f} s wall ({time.strftime('%H:%M:%S', time.gmtime(wall))})")
    accelerator.end_training()
    return 1 if failed else 0


def dry_run(suite: SuiteConfig, state: PartialState) -> int:
    """--dry-run: the suite's first lines and one row per resolved run, from the main process; nothing trained or
    written."""
    if state.is_main_process:
        print("\n".join([*suite.notes, suite_line(suite, state.num_processes, state.device.type),
                         *batch_warnings(suite.runs), *suite.loader_notes]))
        print(dry_run_table(suite.runs).to_markdown(index=False) if suite.runs else "no runs")
        print(f"dry run: {len(suite.runs)} run(s) resolved, nothing trained")
    return 0


def resume_mismatch(results_dir: Path, runs: Sequence[RunConfig]) -> str | None:
    """Why --resume cannot go on because the processes see different results folders, or None.

    Each process reads the folder to decide whether a run is skipped or continued from its checkpoint,
    and they must all decide alike: one training a run that another skips would wait forever in the first
    collective. On several machines that holds only for one folder they all share: the main process
    alone writes records, progress.json and the weights, and every process its own random state.
    """
    seen = []  # per run: its record's status and the checkpoint its progress.json names, as this process sees them
    for cfg in runs:
        record = records.existing_record(results_dir, cfg.run_id)
        progress = records.read_progress(results_dir, cfg.run_id)
        seen.append((record.get("status") if record else None, progress["state"] if progress else None))
    views = gather_object([seen])
    for rank, view in enumerate(views):
        for cfg, mine, main in zip(runs, view, views[0]):
            if mine != main:
                return (f"--resume: process 0 finds {found(*main)} for {cfg.run_id} in {results_dir}, process {rank} "
                        f"finds {found(*mine)}; expected --results-dir to be one folder shared by every machine")
    return None


def peer_lost(error: BaseException) -> bool:
    """Whether a run's error means another process of the world is gone: a collective that timed out
    (--collective-timeout-s) or whose connection the peer closed (gloo), or any torch.distributed error."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(
        words in text for words in ("connection closed by peer", "connection reset by peer", "timed out", "nccl",
                                    "gloo"))


def leave_for_lost_peer(rank: int, run_id: str, error: BaseException) -> None:
    """One line, and out at once: no collective can succeed any more, and tearing the process group down may wait
    on the dead peer. What was written (records, checkpoints) stays whole."""
    print(f"bench/run.py: error: process {rank} lost a peer during {run_id} ({str(error).splitlines()[0][:160]}); "
          "ending this machine's part: run the same command with --resume once every machine is back",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def found(status: str | None, state: str | None) -> str:
    return f"record {status or 'none'}, checkpoint {state or 'none'}"


if __name__ == "__main__":
    sys.exit(main())
