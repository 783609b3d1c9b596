"""`python -m bench.submit --shards N [options] [runner options]`: one suite as N cluster jobs, through submitit.

Job i runs the runner with `--shard i/N` and `--resume` into one shared results folder; a job warned before its time
limit saves at the next step and is requeued (docs/design.md). Options this command does not know are the runner's.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from bench.report import main as report_main
from bench.suite.config import parse_suite
from common.cli import OneLineParser, non_negative_int, positive_int

PROG = "python -m bench.submit"


def add_job_options(parser, each: str) -> None:
    """Where SLURM runs each job (a `job`, or each `machine` of one) and with what: bench.submit's and bench.scaling's."""
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument("--account", help="SLURM account to charge (default: yours)")
    parser.add_argument("--timeout-min", type=positive_int, default=240, metavar="M",
                        help="time limit of each job in minutes (default 240)")
    parser.add_argument("--gpus-per-node", type=non_negative_int, default=1, metavar="G",
                        help=f"GPUs per {each}, one runner process each (default 1; 0 runs one process on the CPU)")
    parser.add_argument("--cpus-per-task", type=positive_int, metavar="C",
                        help=f"CPU cores per {each}, which feed the FFCV loaders (default: the cluster's)")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, allow_abbrev=False,  # a runner option must never pass for an abbreviation of one of these
        description="Split a benchmark suite into N jobs (a SLURM job array via submitit, or local processes).",
        epilog="Every other option goes to each job's runner (see python -m bench.run --help), which also "
        "gets --shard i/N.")
    parser.add_argument("--shards", type=positive_int, required=True, metavar="N",
                        help="number of jobs; job i runs the i-th of N parts of the suite")
    add_job_options(parser, "job")
    parser.add_argument("--folder", type=Path, metavar="DIR",
                        help="submitit's job files and logs (default: RESULTS_DIR/jobs)")
    parser.add_argument("--cluster", choices=("slurm", "local"),
                        help="where the jobs run (default: SLURM where sbatch is installed, else this machine)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the jobs, say how each ended, then write the report over all their records")
    return parser


class RunnerJob:
    """One job: the runner's command in a subprocess, checkpointable the submitit way (a `checkpoint` method that
    returns the resubmission). The launcher ignores SIGUSR1/SIGUSR2, whose default action would end it under the
    runner; the runner sets its own handlers."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.command, self.cwd, self.process = command, cwd, None

    def __call__(self) -> None:
        def ignore_warnings() -> None:
            for signum in (signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(signum, signal.SIG_IGN)

        self.process = subprocess.Popen(self.command, cwd=self.cwd, preexec_fn=ignore_warnings)
        if self.process.wait():
            raise subprocess.CalledProcessError(self.process.returncode, self.command)

    def checkpoint(self, *args, **kwargs):
        """On submitit's warning: let the runner (signalled by SLURM too) save and exit, then resubmit the job."""
        import submitit

        if self.process is not None:
            try:
                self.process.wait(timeout=80)  # within the 90 s warning
            except subprocess.TimeoutExpired:
                self.process.terminate()  # SIGTERM: it saves at its next step, as for a time limit
                self.process.wait()
        return submitit.helpers.DelayedSubmission(RunnerJob(self.command, self.cwd))

    def __getstate__(self) -> dict:
        return {"command": self.command, "cwd": self.cwd, "process": None}  # a Popen does not pickle


def launch_command(processes: int, runner_args: Sequence[str]) -> list[str]:
    """Accelerate's launcher on this machine with `processes` processes (torchrun's for several, gloo on a CPU), the
    runner as a module."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                "--num_processes", str(processes)]
    if processes > 1:
        launcher += ["--multi_gpu", "--main_process_port", "0"]  # 0: a free port, as two jobs may share a node
    return [*launcher, "-m", "bench.run", *runner_args]


def runner_command(runner_args: Sequence[str], shard: int, shards: int, gpus: int) -> list[str]:
    """Job `shard`'s command: one process per GPU (one on a CPU), its part of the suite, resumable."""
    return launch_command(max(gpus, 1), [*runner_args, "--resume", "--shard", f"{shard}/{shards}"])


def main(argv: Sequence[str] | None = None) -> int:
    args, runner_args = build_parser().parse_known_args(argv)
    try:
        import submitit
    except ImportError:
        print(f"{PROG}: error: submitit is not installed; expected it with pip install 'deepnets-bench[slurm]'",
              file=sys.stderr)
        return 2
    suite = parse_suite(runner_args, gpu_available=args.gpus_per_node > 0, num_processes=max(args.gpus_per_node, 1))
    if suite.shard:
        print(f"{PROG}: error: --shard: each job gets its own; expected --shards N for the number of jobs",
              file=sys.stderr)
        return 2
    if args.shards > len(suite.runs):
        print(f"{PROG}: error: --shards {args.shards}: the suite has {len(suite.runs)} run(s); expected at most that "
              "many jobs", file=sys.stderr)
        return 2

    folder = args.folder or suite.context.results_dir / "jobs"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster)
    executor.update_parameters(
        name="deepnets-bench", timeout_min=args.timeout_min, nodes=1, tasks_per_node=1,
        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, slurm_partition=args.partition,
        slurm_account=args.account, slurm_array_parallelism=args.shards,
        # SLURM 22.05 to 23.02 do not pass the job's --cpus-per-task on to srun, which submitit's job script uses.
        slurm_srun_args=[f"--cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else None)
    commands = [RunnerJob(runner_command(runner_args, index, args.shards, args.gpus_per_node), cwd=Path.cwd())
                for index in range(1, args.shards + 1)]
    print(f"{len(suite.runs)} run(s) in {args.shards} job(s) ({executor.cluster}), logs in {folder}/")
    if executor.cluster == "local":
        print("no SLURM here: the jobs run on this machine one after another, so that none times itself against "
              "another")
        jobs = []
        for command in commands:
            jobs.append(job := executor.submit(command))
            job.wait()
    else:
        try:
            jobs = executor.submit_array(commands)
        except submitit.core.utils.FailedJobError as error:  # sbatch refused: no controller, a bad partition...
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "sbatch failed"
            print(f"{PROG}: error: SLURM did not take the jobs ({reason}); expected a reachable cluster, or "
                  "--cluster local to run them on this machine", file=sys.stderr)
            return 1
    for index, job in enumerate(jobs, 1):
        print(f"shard {index}/{args.shards}: job {job.job_id}")
    if not args.wait:
        print(f"when every job has ended: python -m bench.report --results-dir {suite.context.results_dir}")
        return 0

    failed = 0
    for index, job in enumerate(jobs, 1):
        error = job.exception()  # waits for the job to end
        failed += error is not None
        print(f"shard {index}/{args.shards}: job {job.job_id} "
              + ("finished" if error is None else f"failed (see {job.paths.stderr})"))
    reported = report_main(["--results-dir", str(suite.context.results_dir)])
    return 1 if failed or reported else 0


if __name__ == "__main__":
    sys.exit(main())
