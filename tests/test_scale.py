"""Beyond one machine, for real on this one: a run over two machines, a suite over shards and jobs, and
the SLURM templates.

Two `accelerate launch` processes with machine ranks 0 and 1 stand for two machines (one process each,
gloo over 127.0.0.1), submitit's local executor stands for a cluster, and the templates' dry runs get
stand-ins for SLURM's own `scontrol` and `srun`.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psutil
import pytest

from bench.submit import main as submit_main
from bench.suite.config import parse_suite
from bench.suite.recipes import RECIPES
from helpers import REPO, TINY, records_in, run_bench

# Two processes or jobs side by side on this machine's two cores: one loader thread (and torch thread) each.
ONE_CORE = ["--num-workers", "1"]
# 21 test images over 2 ranks in batches of 5: the distributed loader pads, de-duplication must undo it. The
# communication probe after the run at its shortest (one repeat of a step each way).
ONE_RUN = TINY + ONE_CORE + ["--models", "resnet18", "--datasets", "mnist", "--epochs", "1", "--batch-size", "5",
                             "--comm-probe-repeats", "1", "--comm-probe-steps", "1"]
KEEP_STATE = ["--keep-checkpoints", "--checkpoint-minutes", "0"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_on_two_machines(args: list[str], results: tuple[Path, Path],
                           cache: Path) -> list[subprocess.CompletedProcess]:
    """Accelerate's launcher as machines 0 and 1 of one run, side by side, each with its results folder.

    --multi_gpu is Accelerate's torchrun launcher, which also starts CPU processes (the runner then asks for
    gloo); the runner goes as a module (-m bench.run) so that this checkout runs, whichever one is installed.
    """
    port = str(free_port())

    def machine(rank: int) -> subprocess.CompletedProcess:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                    "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                    "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bench.run"]
        return run_bench(args, results[rank], cache, launcher=launcher, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(machine, (0, 1)))


@pytest.fixture(scope="module")
def two_machine_run(tmp_path_factory, cache_dir) -> Path:
    """One run over two machines sharing a results folder, its last state kept."""
    shared = tmp_path_factory.mktemp("two-machines")
    machines = launch_on_two_machines(ONE_RUN + KEEP_STATE, (shared, shared), cache_dir)
    for done in machines:
        assert done.returncode == 0, done.stderr[-4000:]
    # The global main process alone speaks: the other machine's log holds none of the suite's lines.
    assert machines[0].stdout.strip() and not machines[1].stdout.strip(), machines[1].stdout
    return shared


def evaluate_in_one_process(state_dir: Path, model_name: str, cache: Path) -> float:
    """Test accuracy of saved weights, evaluated by a single process with no distributed loader."""
    code = f"""
import sys
from pathlib import Path
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from bench.training.loop import evaluate
from data.augment import DevicePreprocess
from data.encode import prepare_dataset
from data.loaders import make_loader
from models import build_model
encoded = prepare_dataset("mnist", cache_dir=Path({str(cache)!r}), synthetic=True, synthetic_train=64, synthetic_test=21)
accelerator = Accelerator(cpu=True)
model = build_model({model_name!r}, 1)
model.load_state_dict(load_file(str(Path({str(state_dir)!r}) / "model.safetensors")))
loader = make_loader(encoded.paths["test"], batch_size=7, train=False, device=accelerator.device)
result = evaluate(model, loader, DevicePreprocess(encoded.spec.mean, encoded.spec.std), encoded.counts["test"], accelerator)
print(repr(result.acc))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_machines_make_one_run_that_counts_every_test_sample_once(two_machine_run, cache_dir):
    (record,) = records_in(two_machine_run)  # written once, by the main process
    assert record.world_size == 2 and record.global_batch_size == 10 and record.num_machines == 2
    assert record.config["num_machines"] == 2  # part of the run's identity: 1 x 2 processes is another run
    assert record.metrics["peak_lr"] == pytest.approx(RECIPES["fast"].lr_for("resnet18", 10))  # the global batch
    per_process = record.history[0]["train_images_per_s_per_process"]
    assert len(per_process) == 2 and all(rate > 0 for rate in per_process)
    assert record.history[0]["train_images_per_s"] == pytest.approx(sum(per_process))
    state = next((two_machine_run / "checkpoints" / record.run_id).glob("epoch-*"))
    assert sorted(path.name for path in state.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    single = evaluate_in_one_process(state, "resnet18", cache_dir)
    assert record.metrics["test_acc"] == pytest.approx(single, abs=1e-9)


@pytest.mark.slow
def test_two_machines_resume_from_a_shared_results_folder(two_machine_run, cache_dir, tmp_path):
    shared = shutil.copytree(two_machine_run, tmp_path / "shared")
    (before,) = records_in(shared)
    (shared / "runs" / f"{before.run_id}.json").unlink()  # killed after its last checkpoint, before its record
    machines = launch_on_two_machines(ONE_RUN + ["--resume"], (shared, shared), cache_dir)
    for done in machines:
        assert done.returncode == 0, done.stderr[-4000:]
    (after,) = records_in(shared)
    # Both processes loaded the saved weights: a process left with fresh ones would change its half of the test.
    assert after.metrics["test_acc"] == before.metrics["test_acc"] and after.history == before.history
    assert not (shared / "checkpoints" / before.run_id).exists()  # final now, and no --keep-checkpoints


@pytest.mark.slow
def test_a_machine_that_dies_ends_the_run_on_the_other_with_one_line(cache_dir, tmp_path):
    port, args = str(free_port()), [*ONE_RUN, "--epochs", "4",
                                    "--collective-timeout-s", "30", "--checkpoint-minutes", "0",
                                    "--cache-dir", str(cache_dir)]
    machines = []
    for rank in (0, 1):
        machines.append(subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank",
             str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--num_processes", "2",
             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bench.run", *args,
             "--results-dir", str(tmp_path / f"machine-{rank}")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "machine-0" / "checkpoints").glob("*/progress.json")):  # an epoch trained together
            assert time.monotonic() < deadline and machines[0].poll() is None
            time.sleep(0.2)
        dying = psutil.Process(machines[1].pid)
        for process in [*dying.children(recursive=True), dying]:  # machine 1 dies: its launcher and its worker
            process.kill()  # (torchrun starts the worker in a session of its own)
        began = time.monotonic()
        _, stderr = machines[0].communicate(timeout=120)
        ended = time.monotonic() - began
    finally:
        for machine in machines:
            if machine.poll() is None:
                for process in [*psutil.Process(machine.pid).children(recursive=True), psutil.Process(machine.pid)]:
                    process.kill()
    assert machines[0].returncode != 0 and ended < 60, ended
    ours = [line for line in stderr.splitlines() if line.startswith("bench/run.py: error:")]
    assert len(ours) == 1 and "process 0 lost a peer during" in ours[0] and "--resume" in ours[0], stderr[-3000:]


@pytest.mark.slow
def test_resume_without_a_shared_results_folder_stops_with_one_line(two_machine_run, cache_dir, tmp_path):
    own = (shutil.copytree(two_machine_run, tmp_path / "machine-0"), tmp_path / "machine-1")
    (record,) = records_in(own[0])
    (own[0] / "runs" / f"{record.run_id}.json").unlink()
    machines = launch_on_two_machines(ONE_RUN + ["--resume"], own, cache_dir)
    state = next((own[0] / "checkpoints" / record.run_id).glob("epoch-*")).name
    for done, results in zip(machines, own):
        assert done.returncode != 0
        ours = [line for line in done.stderr.splitlines() if line.startswith("bench/run.py: error:")]
        assert ours == [f"bench/run.py: error: --resume: process 0 finds record none, checkpoint {state} for "
                        f"{record.run_id} in {results}, process 1 finds record none, checkpoint none; expected "
                        "--results-dir to be one folder shared by every machine"]
    assert records_in(own[0]) == records_in(own[1]) == []


@pytest.mark.slow
def test_concurrent_shards_make_the_whole_suite_once(smoke_suite):
    """The smoke suite ran as `--shard 1/2` and `--shard 2/2` at once into one folder (tests/conftest.py)."""
    whole = [run.run_id for run in parse_suite(list(smoke_suite.args), gpu_available=False, num_processes=1).runs]
    shares = [parse_suite([*smoke_suite.args, "--shard", f"{part}/2"], gpu_available=False, num_processes=1).runs
              for part in (1, 2)]
    assert all(shares) and sorted(run.run_id for share in shares for run in share) == sorted(whole)  # disjoint
    recorded = [record.run_id for record in records_in(smoke_suite.results)]
    assert sorted(recorded) == sorted(whole)  # none lost, none twice
    assert not [path for path in smoke_suite.results.rglob("*") if path.name.endswith(".tmp")]
    report = (smoke_suite.results / "REPORT.md").read_text()
    assert "from 12 run record(s)" in report
    assert len(pd.read_csv(smoke_suite.results / "tables" / "accuracy.csv")) == 12


SUBMITTED = TINY + ONE_CORE + ["--models", "resnet18", "--datasets", "mnist", "--seeds", "0", "1", "--epochs", "1"]


@pytest.mark.slow
def test_submit_runs_each_shard_as_a_job_into_one_results_folder(tmp_path, cache_dir, monkeypatch):
    # --cluster local: the jobs run as local processes, one after another, from this folder, whether or not this
    # machine has SLURM's commands (CI's has them, with no controller running unless a test cluster is up).
    monkeypatch.chdir(REPO)
    results, jobs = tmp_path / "results", tmp_path / "jobs"
    assert submit_main(["--shards", "2", "--gpus-per-node", "0", "--cluster", "local", "--folder", str(jobs), "--wait",
                        *SUBMITTED,
                        "--results-dir", str(results), "--cache-dir", str(cache_dir)]) == 0
    whole = parse_suite(SUBMITTED, gpu_available=False, num_processes=1).runs
    assert sorted(record.run_id for record in records_in(results)) == sorted(run.run_id for run in whole)
    assert len(list(jobs.glob("*_log.out"))) == 2  # one job per shard
    assert "from 2 run record(s)" in (results / "REPORT.md").read_text()  # --wait reported over both


@pytest.mark.parametrize("args, expected", [
    (["--shards", "3"], "--shards 3: the suite has 2 run(s); expected at most that many jobs"),
    (["--shards", "2", "--shard", "1/2"], "--shard: each job gets its own; expected --shards N for the number of jobs"),
])
def test_submit_refuses_a_bad_split_before_submitting(tmp_path, capsys, args, expected):
    assert submit_main([*args, "--gpus-per-node", "0", *SUBMITTED, "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"python -m bench.submit: error: {expected}"
    assert list(tmp_path.iterdir()) == []  # nothing submitted, no job folder


def test_submit_without_submitit_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without the `slurm` extra looks like
    assert submit_main(["--shards", "2", *SUBMITTED, "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("python -m bench.submit: error: submitit is not installed; expected it "
                                               "with pip install 'deepnets-bench[slurm]'")


SLURM_BIN = {
    # Stand-ins for SLURM's commands: scontrol expands the job's node list; srun starts its command once per
    # node with that node's SLURM_NODEID and SLURM_PROCID (--ntasks-per-node=1), ignoring its own options.
    # (Real sbatch, and bench.submit on SLURM, are tested on a real cluster: tests/test_slurm.py.)
    "scontrol": '[ "$*" = "show hostnames gpu-[07-08]" ] || exit 9\nprintf "gpu-07\\ngpu-08\\n"\n',
    "srun": 'while [ "${1#-}" != "$1" ]; do shift; done\n'
            'for ((node = 0; node < SLURM_NNODES; node++)); do\n'
            '  SLURM_NODEID=$node SLURM_PROCID=$node "$@" || exit\n'
            'done\n',
}


def fake_slurm(tmp_path: Path) -> Path:
    """A folder with SLURM_BIN's stand-ins, to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SLURM_BIN.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def dry_run(template: str, tmp_path: Path, slurm_env: dict[str, str]) -> list[list[str]]:
    """The template's launcher command lines, printed by DRY_RUN=1 with fake SLURM variables and commands."""
    bin_dir = fake_slurm(tmp_path)
    path = REPO / "scripts" / "slurm" / template
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    env = {**os.environ, **slurm_env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DRY_RUN": "1",
           "RESULTS_DIR": "/shared/results", "RUNNER_ARGS": "--preset fast --models resnet18 vgg16"}
    done = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split() for line in done.stdout.splitlines()]


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_multinode_template_starts_one_launcher_per_node(tmp_path):
    lines = dry_run("multinode.sbatch", tmp_path, {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu-[07-08]",
                                                    "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4"})
    assert len(lines) == 2  # one launcher per node
    for rank, words in enumerate(lines):
        assert words[:3] == ["python", "-m", "accelerate.commands.launch"] and "--multi_gpu" in words
        assert option(words, "--machine_rank") == str(rank) and option(words, "--num_machines") == "2"
        assert option(words, "--main_process_ip") == "gpu-07"  # the first node of the list
        assert option(words, "--main_process_port") == str(20000 + 123456 % 20000)
        assert option(words, "--num_processes") == "8"  # 2 nodes x 4 GPUs
        assert words[words.index("-m", 3):] == ["-m", "bench.run", "--resume", "--results-dir", "/shared/results",
                                                "--preset", "fast", "--models", "resnet18", "vgg16"]


def test_multinode_template_runs_one_process_with_accelerates_plain_launcher(tmp_path):
    """One node with one GPU (a scaling study's smallest point): Accelerate refuses --multi_gpu for one process."""
    (words,) = dry_run("multinode.sbatch", tmp_path, {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu-[07-08]",
                                                       "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "1"})
    assert "--multi_gpu" not in words and option(words, "--num_processes") == "1"
    assert option(words, "--num_machines") == "1" and option(words, "--machine_rank") == "0"


@pytest.mark.parametrize("gpus, processes, launcher", [("0", "1", []), ("1", "1", []),
                                                     ("4", "4", ["--multi_gpu", "--main_process_port", "0"])])
def test_array_template_runs_its_shard_of_the_suite(tmp_path, gpus, processes, launcher):
    (words,) = dry_run("array.sbatch", tmp_path, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0",
                                                   "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_GPUS_ON_NODE": gpus,
                                                   "SLURM_NNODES": "1"})
    assert words == ["python", "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", processes,
                     *launcher, "-m", "bench.run", "--resume", "--shard", "3/4", "--results-dir", "/shared/results", "--preset",
                     "fast", "--models", "resnet18", "vgg16"]
