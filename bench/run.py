"""The benchmark suite: `accelerate launch bench/run.py [options]` (or `python -m bench.run`).

One run, file by file: this file's `train_suite` -> bench/training/train.py (`train_run`) -> bench/training/loop.py
(steps, evaluation) and bench/training/probes.py (measurements beside training, the communication probe after it)
-> bench/results/records.py (the record).
"""
from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object

from bench.measuring.device import cpu_has_native_bf16, precision_error
from bench.measuring.environment import cpu_launch_error, num_machines, use_cpu
from bench.report import write_report
from bench.results import records
from bench.results.records import CheckpointError
from bench.results.schema import FINAL_STATUSES
from bench.results.tracking import tracker_dir, tracker_error
from bench.suite.config import RunConfig, SuiteConfig, parse_suite
from bench.suite.options import collective_timeout
from bench.suite.plan import batch_warnings, dry_run_table, suite_line
from bench.suite.preemption import REQUEUE_EXIT, Preempted, Preemption, requeue, stop_line
from bench.training.runtime import configure_backends, ddp_kwargs, print_main
from bench.training.train import failed_record, train_run
from common.files import DiskFull
from data.errors import DataError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_suite(argv)
    except DiskFull as error:  # a results, checkpoint or cache folder filled up: what was written is whole
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        return 1


def run_suite(argv: Sequence[str] | None) -> int:
    """The processes, the options and the Accelerator; the suite itself is `train_suite`."""
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
                        num_machines=num_machines(state.num_processes), native_bf16=gpu or cpu_has_native_bf16(),
                        preemption=preemption)
    if error := precision_error(suite.precision, state.device):
        print(f"bench/run.py: error: --precision {suite.precision}: {error}", file=sys.stderr)
        return 2
    if suite.log_with and (error := tracker_error(list(suite.log_with))):
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        return 2
    if suite.dry_run:
        return dry_run(suite, state)
    accelerator = Accelerator(mixed_precision=suite.precision, cpu=cpu, log_with=list(suite.log_with) or None,
                              project_dir=str(tracker_dir(suite.context.results_dir)),
                              kwargs_handlers=[ddp_kwargs(suite.communication)])
    try:
        return train_suite(suite, accelerator, started)
    finally:
        accelerator.end_training()


def train_suite(suite: SuiteConfig, accelerator: Accelerator, started: float) -> int:
    """Every run in turn, each record written as it ends, then the report: 0 when every run finished, 1 when one
    did not, 2 when the data or a checkpoint cannot be used, 75 when a signal stopped the suite."""
    context = suite.context
    for note in suite.notes:
        print_main(accelerator, note)
    if suite.shard:
        print_main(accelerator, f"shard {suite.shard[0]}/{suite.shard[1]}")
        if not suite.runs:  # an array with more tasks than the suite has runs: the spare tasks succeed idle
            print_main(accelerator, "no runs in this part: the suite has fewer runs than parts; nothing to do")
            return 0
    print_main(accelerator, suite_line(suite, accelerator.num_processes, accelerator.device.type))
    for line in (*batch_warnings(suite.runs), *suite.loader_notes):
        print_main(accelerator, line)
    configure_backends(accelerator.device)
    if context.resume and (error := resume_mismatch(context.results_dir, suite.runs)):
        accelerator.print(f"bench/run.py: error: {error}", file=sys.stderr)  # every machine says why it stops
        return 2

    outcomes: list[tuple[str, str]] = []
    for cfg in suite.runs:
        done = records.existing_record(context.results_dir, cfg.run_id) if context.resume else None
        if done is not None and done.status in FINAL_STATUSES:
            print_main(accelerator, f"skip {cfg.run_id}: already recorded ({done.status})")
            outcomes.append((cfg.run_id, done.status))
            continue
        print_main(accelerator, f"run {cfg.run_id}")
        run_started = time.time()
        try:
            record = train_run(cfg, context, accelerator)
        except Preempted as preempted:  # the state at that step is saved; the runs after it wait for the resume
            if accelerator.is_main_process:
                print(stop_line(preempted, requeue(preempted)), flush=True)
            return REQUEUE_EXIT
        except (DataError, CheckpointError) as error:
            accelerator.print(f"bench/run.py: error: {error}", file=sys.stderr)  # every machine says why it stops
            return 2
        except DiskFull:
            raise  # not the run's fault: the suite cannot go on writing
        except Exception as error:  # a broken run is a result; the suite goes on
            if accelerator.num_processes > 1 and peer_lost(error):
                leave_for_lost_peer(accelerator.process_index, cfg.run_id, error)
            print_main(accelerator, f"run {cfg.run_id} failed: {error!r}")
            record = failed_record(cfg, context, accelerator, run_started, error)
        if accelerator.is_main_process:
            records.write_record(context.results_dir, record)
        print_main(accelerator, f"{record.status}: {cfg.run_id}" + (f" ({record.error})" if record.error else ""))
        outcomes.append((cfg.run_id, record.status))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(write_report(context.results_dir).summary_markdown)
    failed = [(run_id, status) for run_id, status in outcomes if status != "finished"]
    wall = time.time() - started
    for run_id, status in failed:
        print_main(accelerator, f"{status}: {run_id}")
    print_main(accelerator, f"suite done: {len(outcomes) - len(failed)} finished, {len(failed)} not finished, "
                            f"{wall:,.1f} s wall ({time.strftime('%H:%M:%S', time.gmtime(wall))})")
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
    """Why --resume cannot go on, or None: every process must find the same records and checkpoints (one that trains a
    run another skips would wait forever in its first collective), so the machines must share one results folder."""
    seen = []  # per run: its record's status and the checkpoint its progress.json names, as this process sees them
    for cfg in runs:
        record = records.existing_record(results_dir, cfg.run_id)
        progress = records.read_progress(results_dir, cfg.run_id)
        seen.append((record.status if record else None, progress["state"] if progress else None))
    views = gather_object([seen])
    for rank, view in enumerate(views):
        for cfg, mine, main in zip(runs, view, views[0]):
            if mine != main:
                return (f"--resume: process 0 finds {saved_words(*main)} for {cfg.run_id} in {results_dir}, process "
                        f"{rank} finds {saved_words(*mine)}; expected --results-dir to be one folder shared by every "
                        "machine")
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


def saved_words(status: str | None, state: str | None) -> str:
    """What a process finds saved for a run, in words."""
    return f"record {status or 'none'}, checkpoint {state or 'none'}"


if __name__ == "__main__":
    sys.exit(main())
