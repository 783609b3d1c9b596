"""The SLURM templates and `bench.submit --cluster slurm` on a real cluster: the one-machine cluster of
scripts/slurm/local-cluster.sh (nodes n1 and n2, partition gpu, no GPUs), which CI starts as root.

These tests never install or start anything: without `sinfo`, or without a cluster answering with two nodes,
they skip. Everything is submitted at once by one module fixture (the array, whose first task is preempted
mid-run, the two-node job and bench.submit's array), then waited for, so that the jobs share the cluster's
four CPU slots.

What the templates need here, on the sbatch command line and never in the templates: --gpus-per-node=0 (the
cluster has no GRES GPUs, and SLURM refuses a GPU it does not have) and --cpus-per-task=1 (a node has this
machine's CPUs, fewer than the templates ask for). --account=my-account is accepted as is: the cluster keeps
no accounting, so no account is checked.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.suite.config import parse_suite
from helpers import REPO, TINY, records_in, run_module
from test_scale import KEEP_STATE, ONE_CORE, ONE_RUN, evaluate_in_one_process

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ON_LOCAL_CLUSTER = ["--gpus-per-node=0", "--cpus-per-task=1", "--partition=gpu"]
SUITE = TINY + ONE_CORE + ["--models", "resnet18", "--datasets", "mnist", "--seeds", "0", "1", "--epochs", "1"]
# The array's suite: resnet18 and the example plugin's tiny CNN, one per task (split by FLOPs), 2 epochs of a
# dozen and more steps, validated every 20 steps: resnet18's line at step 20 says that its task is in its second
# epoch, where SLURM's warning (SIGUSR1) then preempts it. The default checkpoint cadence (5 minutes).
PREEMPTED = TINY + ONE_CORE + ["--plugin", "examples/tiny_cnn.py", "--models", "resnet18", "tiny_cnn", "--datasets",
                               "mnist", "--epochs", "2", "--synthetic-size", "320", "21", "--eval-every", "20",
                               "--no-inference"]
# The scaling study over machines (python -m bench.scaling --machines 1 2): resnet18 for 6 and 3 steps, a short probe.
SCALED = TINY + ONE_CORE + ["--models", "resnet18", "--datasets", "mnist", "--epochs", "1", "--synthetic-size", "128",
                            "21", "--no-inference", "--comm-probe-repeats", "3", "--comm-probe-steps", "1"]
WAIT_S = 600


def nodes_up() -> str | None:
    """Why the tests cannot run here, or None when a cluster answers with two nodes in partition gpu."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (sudo bash scripts/slurm/local-cluster.sh installs and starts one)"
    done = subprocess.run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %t"], capture_output=True, text=True,
                          timeout=30)
    up = {line.split()[0] for line in done.stdout.splitlines()
          if len(line.split()) == 2 and line.split()[1].rstrip("*") in ("idle", "mix", "alloc", "comp")}
    if done.returncode != 0 or len(up) < 2:
        return (f"no SLURM cluster with 2 nodes up in partition gpu ({(done.stderr or done.stdout).strip() or 'none'});"
                " sudo bash scripts/slurm/local-cluster.sh starts one")
    return None


def sbatch(template: str, options: list[str], env: dict[str, str]) -> str:
    """Submits a real template from the repository root; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", *ON_LOCAL_CLUSTER, *options, str(REPO / "scripts" / "slurm" / template)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def queued(job_ids: list[str]) -> set[str]:
    done = subprocess.run(["squeue", "-h", "-o", "%A %F", "-j", ",".join(job_ids)], capture_output=True, text=True,
                          timeout=30)
    return {word for line in done.stdout.splitlines() for word in line.split()} & set(job_ids)


def wait_for(job_ids: list[str], deadline: float) -> None:
    while queued(job_ids):
        assert time.monotonic() < deadline, f"jobs {job_ids} still queued: " + subprocess.run(
            ["squeue"], capture_output=True, text=True).stdout
        time.sleep(1)


def runner_args(args: list[str], cache: Path) -> str:
    return " ".join([*args, "--cache-dir", str(cache)])


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory, cache_dir) -> dict:
    """Every job of this module, submitted at once, then waited for."""
    reason = nodes_up()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    deadline = started + WAIT_S
    runs = {name: root / name for name in ("array", "multinode", "submit", "scaling")}
    jobs = {  # the array first: it is the longest
        # Appended: a requeued task's output follows its first session's in one file.
        "array": sbatch("array.sbatch", ["--array=1-2", "--open-mode=append", f"--output={root}/array-%a.out"],
                        {"GPUS_PER_NODE": "0", "RESULTS_DIR": str(runs["array"]),
                         "RUNNER_ARGS": runner_args(PREEMPTED, cache_dir)}),
        # GPUS_PER_NODE=1: one process per node (the template's world is nodes x GPUs per node), on the CPU here.
        "multinode": sbatch("multinode.sbatch", ["--nodes=2", f"--output={root}/multinode-%j.out"],
                            {"GPUS_PER_NODE": "1", "RESULTS_DIR": str(runs["multinode"]),
                             "RUNNER_ARGS": runner_args(ONE_RUN + KEEP_STATE, cache_dir)}),
    }
    submit = subprocess.Popen(
        [sys.executable, "-m", "bench.submit", "--cluster", "slurm", "--shards", "2", "--partition", "gpu",
         "--gpus-per-node", "0", "--cpus-per-task", "1", "--timeout-min", "10", "--wait", *SUITE,
         "--results-dir", str(runs["submit"]), "--cache-dir", str(cache_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    scaling = subprocess.Popen(
        [sys.executable, "-m", "bench.scaling", "--machines", "1", "2", "--gpus-per-node", "0", "--cpus-per-task", "1",
         "--partition", "gpu", "--timeout-min", "10", "--folder", str(root / "scaling-jobs"), "--wait", *SCALED,
         "--results-dir", str(runs["scaling"]), "--cache-dir", str(cache_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    # SLURM's warning to resnet18's task in its second epoch, as --signal=USR1@90 sends it to the job step.
    requeued_at, warned = None, None
    while requeued_at is None and time.monotonic() < deadline and queued([jobs["array"]]):
        for task in (1, 2):
            log = root / f"array-{task}.out"
            if log.exists() and re.search(r"resnet18 mnist epoch 1\.\d+/2:", log.read_text()):
                done = subprocess.run(["scancel", "--signal=USR1", f"{jobs['array']}_{task}"], capture_output=True,
                                      text=True)
                assert done.returncode == 0, done.stderr
                requeued_at, warned = time.monotonic() - started, task
        time.sleep(0.2)

    wait_for(list(jobs.values()), deadline)
    out, _ = submit.communicate(timeout=max(deadline - time.monotonic(), 1))
    scaled, _ = scaling.communicate(timeout=max(deadline - time.monotonic(), 1))
    print(f"slurm jobs done in {time.monotonic() - started:.0f} s (warned after {requeued_at} s)")
    logs = {path.name: path.read_text() for path in root.glob("*.out")}
    return {"root": root, "runs": runs, "jobs": jobs, "logs": logs, "requeued_at": requeued_at, "warned": warned,
            "submit": (submit.returncode, out), "scaling": (scaling.returncode, scaled)}


def test_array_template_over_two_shards_makes_the_whole_suite(cluster_runs):
    results = cluster_runs["runs"]["array"]
    # The whole suite, once: its two runs (not parsed here: the plugin's model would stay registered in this process).
    recorded = records_in(results)
    assert sorted(record.model for record in recorded) == ["resnet18", "tiny_cnn"], cluster_runs["logs"]
    whole = [record.run_id for record in recorded]
    assert len([name for name in cluster_runs["logs"] if name.startswith("array-")]) == 2  # one task per shard
    report = run_module("bench.report", "--results-dir", str(results))
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"from {len(whole)} run record(s)" in (results / "REPORT.md").read_text()


def test_multinode_template_over_two_nodes_makes_one_run(cluster_runs, cache_dir):
    results = cluster_runs["runs"]["multinode"]
    (record,) = records_in(results)  # written once, by the main process
    assert record.world_size == 2 and record.global_batch_size == 10 and record.num_machines == 2
    # The run's test accuracy counts every test sample once: that of its weights evaluated by one process.
    state = next((results / "checkpoints" / record.run_id).glob("epoch-*"))
    assert sorted(path.name for path in state.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert record.metrics["test_acc"] == pytest.approx(evaluate_in_one_process(state, "resnet18", cache_dir),
                                                          abs=1e-9)


def test_submit_on_slurm_sends_one_job_array_into_one_results_folder(cluster_runs):
    returncode, out = cluster_runs["submit"]
    assert returncode == 0, out[-4000:]
    results = cluster_runs["runs"]["submit"]
    whole = [run.run_id for run in parse_suite(SUITE, gpu_available=False, num_processes=1).runs]
    assert sorted(record.run_id for record in records_in(results)) == sorted(whole)
    assert "from 2 run record(s)" in (results / "REPORT.md").read_text()  # --wait wrote the report


def test_a_preempted_task_saves_its_step_requeues_itself_and_resumes_there(cluster_runs):
    assert cluster_runs["requeued_at"] is not None, f"never warned (no step-20 line seen):\n{cluster_runs['logs']}"
    task = cluster_runs["warned"]
    log = cluster_runs["logs"][f"array-{task}.out"]
    (record,) = [r for r in records_in(cluster_runs["runs"]["array"]) if r.model == "resnet18"]
    # Warned in its second epoch, the task saved, requeued itself (SLURM ran it again: the record exists, with one
    # requeue counted) and resumed at its step: the same history as an uninterrupted run, the lost time apart.
    assert record.status == "finished" and record.metrics["requeues"] == 1, log[-3000:]
    assert [row["step"] for row in record.history][0] == 20 and record.history[-1]["epoch"] == 2
    assert len(record.history) == 2 and record.metrics["requeue_lost_s"] > 0


def test_scaling_over_machines_submits_the_multinode_template_one_size_after_another(cluster_runs):
    returncode, out = cluster_runs["scaling"]
    assert returncode == 0, out[-4000:]
    one, two = sorted(records_in(cluster_runs["runs"]["scaling"]), key=lambda record: record.num_machines)
    assert (one.num_machines, one.world_size, two.num_machines, two.world_size) == (1, 1, 2, 2)
    assert one.status == two.status == "finished" and one.batch_size == two.batch_size  # weak: the batch per process
    assert two.started_at >= one.finished_at  # the second size waited for the first (--dependency=afterany)
    # Two machines (here two SLURM nodes on this host): the probe measured their link.
    assert two.env["link"]["backend"] == "gloo" and two.comm_probe["world_size"] == 2
    assert two.metrics["grad_busbw_gbs"] > 0 and two.metrics["exposed_comm_ms"] is not None
    table = pd.read_csv(cluster_runs["runs"]["scaling"] / "tables" / "scaling.csv")
    assert list(table["axis"]) == ["machines, 1 process each"] * 2 and list(table["machines"]) == [1, 2]
    speed_up = two.metrics["train_images_per_s"] / one.metrics["train_images_per_s"]
    assert list(table["efficiency %"]) == pytest.approx([100.0, speed_up / 2 * 100])
