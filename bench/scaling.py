"""`python -m bench.scaling --processes 1 2 4 8 [--mode weak|strong] [levers] [runner options]`: one configuration at
several sizes (processes here, or --machines through SLURM's multinode template), each an ordinary run of its own
launch, then the report's scaling tables; every point is checked before the first launch (docs/scaling-out.md).
"""
from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from bench.measuring.device import cpu_has_native_bf16
from bench.report import NoRecordsError, write_report
from bench.reporting.scaling import sections
from bench.results.records import existing_record
from bench.suite.config import RunConfig, SuiteConfig, parse_suite
from bench.suite.options import POWERSGD_HOOKS, SWITCHES, add_communication_options
from bench.suite.plan import batch_and_lr, batch_warnings
from bench.submit import add_job_options, launch_command
from common.cli import OneLineParser, positive_int
from common.files import DiskFull

PROG = "python -m bench.scaling"
TEMPLATE = Path(__file__).resolve().parent.parent / "scripts" / "slurm" / "multinode.sbatch"
SWITCHED = ("gradient_as_bucket_view", "static_graph", "sync_bn")
NOT_DONE = ("failed", "diverged", "oom")  # a point without a usable record (unsupported is a result)


class PlanError(Exception):
    """A study that cannot run as asked; the message is one line naming the option and what was expected."""


@dataclass(frozen=True)
class Point:
    machines: int
    processes: int  # on each machine
    batch_size: int  # per process
    levers: tuple[str, ...]  # the runner's communication options of this launch
    runs: tuple[RunConfig, ...]  # what the launch trains, resolved here

    @property
    def world(self) -> int:
        return self.machines * self.processes

    def runner_args(self, given: Sequence[str]) -> list[str]:
        return [*given, "--batch-size", str(self.batch_size), *self.levers, "--resume"]

    def words(self) -> str:
        size = f"{self.world} process{'' if self.world == 1 else 'es'}"
        return size if self.machines == 1 else f"{self.machines} machines x {self.processes} = {size}"


@dataclass(frozen=True)
class Study:
    mode: str
    points: tuple[Point, ...]
    runner_args: tuple[str, ...]
    results_dir: Path


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, allow_abbrev=False,  # a runner option must never pass for an abbreviation of one of these
        description="One configuration at several process or machine counts, a launch each: how it scales.",
        epilog="Every other option goes to each launch's runner (python -m bench.run --help), with --batch-size, "
        "the levers' options and --resume set per point.")
    parser.add_argument("--processes", nargs="+", type=positive_int, metavar="P",
                        help="process counts on this machine, one launch each, one after another (default: 1 and "
                        "2); on a GPU at most its GPUs")
    parser.add_argument("--machines", nargs="+", type=positive_int, metavar="M",
                        help="machine counts on a SLURM cluster instead, one multinode job each with --gpus-per-node "
                        "processes per machine")
    parser.add_argument("--mode", choices=("weak", "strong"), default="weak",
                        help="weak (default): the per-process batch fixed, the global batch grows; strong: the global "
                        "batch fixed and split across the processes")
    parser.add_argument("--global-batch", type=positive_int, metavar="N",
                        help="with --mode strong: the global batch (default: the smallest point's)")
    parser.add_argument("--dry-run", action="store_true", help="print the points and their commands, launch nothing")
    add_communication_options(parser.add_argument_group(
        "levers", "each value a launch of its own at every size (a product when several are swept)"), sweep=True)
    cluster = parser.add_argument_group("cluster (with --machines)")
    add_job_options(cluster, "machine")
    cluster.add_argument("--template", type=Path, default=TEMPLATE, metavar="FILE",
                         help="the multinode sbatch template (default: scripts/slurm/multinode.sbatch)")
    cluster.add_argument("--folder", type=Path, metavar="DIR", help="the jobs' logs (default: RESULTS_DIR/jobs)")
    cluster.add_argument("--wait", action="store_true", help="wait for the jobs, then write the report")
    return parser


def lever_sets(args) -> list[tuple[str, ...]]:
    """The runner options of every combination of the levers asked for (the defaults add none)."""
    powersgd = [hook for hook in args.comm_hook if hook in POWERSGD_HOOKS]
    if args.powersgd_rank and not powersgd:
        raise PlanError(f"--powersgd-rank: the rank is PowerSGD's; expected --comm-hook {' or '.join(POWERSGD_HOOKS)} "
                        "among the hooks")
    hooks = [("--comm-hook", hook, "--powersgd-rank", str(rank)) if hook in POWERSGD_HOOKS else
             (("--comm-hook", hook) if hook != "no" else ())
             for hook in dict.fromkeys(args.comm_hook)
             for rank in (dict.fromkeys(args.powersgd_rank or [1]) if hook in POWERSGD_HOOKS else [None])]
    buckets = [("--bucket-cap-mb", str(size)) for size in dict.fromkeys(args.bucket_cap_mb)] if args.bucket_cap_mb \
        else [()]
    switches = [[(f"--{name.replace('_', '-')}",) if on else () for on in SWITCHES[getattr(args, name)]]
                for name in SWITCHED]
    return [sum(parts, ()) for parts in itertools.product(hooks, buckets, *switches)]


def plan(args, runner_args: list[str]) -> Study:
    """Every point of the study, resolved through the runner's own options (so checked) before anything runs."""
    if args.machines and args.processes:
        raise PlanError("--processes and --machines: one axis per study; expected one of them (with --machines, "
                        "--gpus-per-node sets the processes on each machine)")
    if args.global_batch and args.mode != "strong":
        raise PlanError("--global-batch: the global batch is fixed by strong scaling only; expected --mode strong")
    if args.machines:
        sizes, gpu = [(machines, max(args.gpus_per_node, 1)) for machines in sorted(set(args.machines))], \
            args.gpus_per_node > 0
    else:
        sizes, gpu = [(1, processes) for processes in sorted(set(args.processes or [1, 2]))], torch.cuda.is_available()
        if gpu and sizes[-1][1] > torch.cuda.device_count():
            raise PlanError(f"--processes {sizes[-1][1]}: this machine has {torch.cuda.device_count()} GPU(s); "
                            "expected at most that many processes")
    levers = lever_sets(args)

    def suite(machines: int, processes: int, extra: list[str]) -> SuiteConfig:
        return parse_suite([*runner_args, *extra], gpu_available=gpu, num_processes=machines * processes,
                           num_machines=machines, native_bf16=gpu or cpu_has_native_bf16())  # as the runner decides

    smallest = sizes[0][0] * sizes[0][1]
    first = suite(*sizes[0], list(levers[0]))
    base = first.runs
    if not base:
        raise PlanError("the runner's options leave no runs to scale; expected --models and --datasets (no --shard)")
    batches = {run.batch_size for run in base}
    if len(batches) > 1:
        raise PlanError(f"the runs train at per-process batches {sorted(batches)}; expected one (--batch-size)")
    global_batch = None if args.mode == "weak" else args.global_batch or batches.pop() * smallest
    if global_batch:
        bad = [machines * processes for machines, processes in sizes if global_batch % (machines * processes)]
        if bad:
            raise PlanError(f"--global-batch {global_batch}: {bad[0]} processes cannot split it evenly; expected a "
                            f"multiple of every process count ({', '.join(str(m * p) for m, p in sizes)})")
    per_process = {size: global_batch // (size[0] * size[1]) if global_batch else base[0].batch_size for size in sizes}
    points = tuple(Point(machines, processes, per_process[machines, processes], lever, suite(
        machines, processes, ["--batch-size", str(per_process[machines, processes]), *lever]).runs)
                   for lever in levers for machines, processes in sizes)
    return Study(args.mode, points, tuple(runner_args), first.context.results_dir)


def first_lines(study: Study) -> list[str]:
    """What the study is about to do: mode, the batch and the lr rule, the lr at each point, the levers."""
    first = study.points[0]
    sizes = list(dict.fromkeys(point.words() for point in study.points))
    fixed = (f"per-process batch {first.batch_size}, the global batch growing" if study.mode == "weak"
             else f"global batch {first.batch_size * first.world} split across the processes")
    lr = "lr set by --lr at every point" if first.runs[0].lr else first.runs[0].recipe.lr_rule()
    lines = [f"{study.mode} scaling of {len(first.runs)} run(s) over {', '.join(sizes)}: {fixed}; {lr}"]
    lines += [f"  {point.words()}: {batch_and_lr(point.runs)}" for point in study.points
              if point.levers == first.levers]
    lines += batch_warnings([run for point in study.points for run in point.runs])
    levers = list(dict.fromkeys(point.levers for point in study.points))
    if levers != [()]:
        lines.append(f"levers, each a launch at every size: {'; '.join(' '.join(lever) or 'none' for lever in levers)}")
    lines.append(f"{len(study.points)} launch(es), each with --resume; results in {study.results_dir}/")
    return lines


def launch_here(study: Study) -> None:
    """Each point on this machine, one launch after another (a launch that fails leaves its record, or none)."""
    for number, point in enumerate(study.points, start=1):
        command = launch_command(point.world, point.runner_args(study.runner_args))
        print(f"point {number}/{len(study.points)}: {point.words()} {' '.join(point.levers)}".rstrip(), flush=True)
        subprocess.run(command)


def sbatch_command(point: Point, args, folder: Path, after: str | None) -> list[str]:
    options = [f"--nodes={point.machines}", "--ntasks-per-node=1", f"--gpus-per-node={args.gpus_per_node}",
               f"--time={args.timeout_min}", f"--output={folder}/scaling-%j.out"]
    options += [f"--{name}={value}" for name, value in (("partition", args.partition), ("account", args.account),
                                                         ("cpus-per-task", args.cpus_per_task)) if value]
    return ["sbatch", "--parsable", *options, *([f"--dependency=afterany:{after}"] if after else []),
            str(args.template)]


def submit(study: Study, args) -> list[str] | str:
    """Each point as a multinode job, each after the previous; the job ids, or why SLURM did not take them."""
    if shutil.which("sbatch") is None:
        return "--machines: sbatch is not installed here; expected a SLURM cluster (sudo bash " \
               "scripts/slurm/local-cluster.sh starts one on this machine)"
    if not args.template.is_file():
        return f"--template {args.template}: no such file; expected a copy of scripts/slurm/multinode.sbatch"
    if spaced := [arg for arg in study.runner_args if " " in arg]:
        return f"{spaced[0]!r}: the template splits RUNNER_ARGS at spaces; expected runner options without spaces"
    folder = args.folder or study.results_dir / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    jobs: list[str] = []
    for number, point in enumerate(study.points, start=1):
        done = subprocess.run(sbatch_command(point, args, folder, jobs[-1] if jobs else None), capture_output=True,
                              text=True, timeout=60, env={
                                  **os.environ, "PYTHON": sys.executable, "RESULTS_DIR": str(study.results_dir),
                                  "GPUS_PER_NODE": str(point.processes),
                                  "RUNNER_ARGS": " ".join(point.runner_args(study.runner_args))})
        if done.returncode:
            return f"SLURM did not take point {number} ({(done.stderr.strip().splitlines() or ['sbatch failed'])[-1]})"
        jobs.append(done.stdout.strip().split(";")[0])
        print(f"point {number}/{len(study.points)}: {point.words()} {' '.join(point.levers)}: job {jobs[-1]}".rstrip(),
              flush=True)
    return jobs


def wait_for(jobs: list[str]) -> None:
    """Until none of `jobs` is queued or running (squeue forgets ended jobs)."""
    while True:
        done = subprocess.run(["squeue", "-h", "-o", "%A", "-j", ",".join(jobs)], capture_output=True, text=True,
                              timeout=60)
        if not set(done.stdout.split()) & set(jobs):
            return
        time.sleep(2)


def finish(study: Study) -> int:
    """The report over the results folder, the scaling tables printed, and 1 where a point has no usable record."""
    try:
        report = write_report(study.results_dir)
    except NoRecordsError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    for section in sections(report.tables["scaling"]):
        print(f"\n### {section['title']}\n\n{section['table']}\n\n{section['verdict']}")
    print(f"\nFull report: {report.report_path}")
    missing = [run.run_id for point in study.points for run in point.runs
               if (record := existing_record(study.results_dir, run.run_id)) is None or record.status in NOT_DONE]
    if missing:
        print(f"{PROG}: {len(missing)} point run(s) without a finished or unsupported record: {', '.join(missing)}",
              file=sys.stderr)
    return 1 if missing else 0


def main(argv: Sequence[str] | None = None) -> int:
    args, runner_args = build_parser().parse_known_args(argv)
    try:
        study = plan(args, runner_args)
    except PlanError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(first_lines(study)), flush=True)
    if args.dry_run:
        for point in study.points:
            runner = point.runner_args(study.runner_args)
            print(shlex.join(launch_command(point.world, runner)) if not args.machines else
                  f"RUNNER_ARGS={shlex.quote(' '.join(runner))} GPUS_PER_NODE={point.processes} "
                  + shlex.join(sbatch_command(point, args, args.folder or study.results_dir / "jobs", None)))
        return 0
    try:
        if not args.machines:
            launch_here(study)
            return finish(study)
        jobs = submit(study, args)
        if isinstance(jobs, str):
            print(f"{PROG}: error: {jobs}", file=sys.stderr)
            return 1
        if not args.wait:
            print(f"when job {jobs[-1]} has ended: python -m bench.report --results-dir {study.results_dir}")
            return 0
        wait_for(jobs)
        return finish(study)
    except DiskFull as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
