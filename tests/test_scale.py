"""Beyond one machine, for real on this one: two `accelerate launch` processes with machine ranks 0 and 1
stand for two machines (one process each, gloo over 127.0.0.1) in one run.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.config import RECIPES
from helpers import REPO, TINY, records_in, run_bench

# Two processes side by side on this machine's two cores: one loader thread (and torch thread) each.
ONE_CORE = ["--num-workers", "1"]
ONE_RUN = TINY + ONE_CORE + ["--models", "resnet18", "--datasets", "mnist", "--epochs", "1",
                             "--batch-size", "5"]  # 21 test images over 2 ranks in batches of 5: the distributed loader pads
KEEP_STATE = ["--keep-checkpoints", "--checkpoint-minutes", "0"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_on_two_machines(args: list[str], results: tuple[Path, Path], cache: Path) -> list[subprocess.CompletedProcess]:
    """Accelerate's launcher as machines 0 and 1 of one run, side by side, each with its results folder."""
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
        assert "1 run(s), 2 process(es) on cpu" in done.stdout  # each machine's process saw the global world
    return shared


def evaluate_in_one_process(state_dir: Path, model_name: str, cache: Path) -> float:
    """Test accuracy of saved weights, evaluated by a single process with no distributed loader."""
    code = f"""
import sys
from pathlib import Path
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from bench.loop import evaluate
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
    assert record["world_size"] == 2 and record["global_batch_size"] == 10
    assert record["metrics"]["peak_lr"] == pytest.approx(RECIPES["fast"].lr_for("resnet18", 10))  # the global batch
    per_process = record["history"][0]["train_images_per_s_per_process"]
    assert len(per_process) == 2 and all(rate > 0 for rate in per_process)
    assert record["history"][0]["train_images_per_s"] == pytest.approx(sum(per_process))
    state = next((two_machine_run / "checkpoints" / record["run_id"]).glob("epoch-*"))
    assert sorted(path.name for path in state.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    single = evaluate_in_one_process(state, "resnet18", cache_dir)
    assert record["metrics"]["test_acc"] == pytest.approx(single, abs=1e-9)


@pytest.mark.slow
def test_two_machines_resume_from_a_shared_results_folder(two_machine_run, cache_dir, tmp_path):
    shared = shutil.copytree(two_machine_run, tmp_path / "shared")
    (before,) = records_in(shared)
    (shared / "runs" / f"{before['run_id']}.json").unlink()  # killed after its last checkpoint, before its record
    machines = launch_on_two_machines(ONE_RUN + ["--resume"], (shared, shared), cache_dir)
    for done in machines:
        assert done.returncode == 0, done.stderr[-4000:]
        assert f"resuming {before['run_id']} after epoch 1" in done.stdout
    (after,) = records_in(shared)
    # Both processes loaded the saved weights: a process left with fresh ones would change its half of the test.
    assert after["metrics"]["test_acc"] == before["metrics"]["test_acc"] and after["history"] == before["history"]
    assert not (shared / "checkpoints" / before["run_id"]).exists()  # final now, and no --keep-checkpoints


@pytest.mark.slow
def test_resume_without_a_shared_results_folder_stops_with_one_line(two_machine_run, cache_dir, tmp_path):
    own = (shutil.copytree(two_machine_run, tmp_path / "machine-0"), tmp_path / "machine-1")
    (record,) = records_in(own[0])
    (own[0] / "runs" / f"{record['run_id']}.json").unlink()
    machines = launch_on_two_machines(ONE_RUN + ["--resume"], own, cache_dir)
    state = next((own[0] / "checkpoints" / record["run_id"]).glob("epoch-*")).name
    for done, results in zip(machines, own):
        assert done.returncode != 0
        ours = [line for line in done.stderr.splitlines() if line.startswith("bench/run.py: error:")]
        assert ours == [f"bench/run.py: error: --resume: process 0 finds record none, checkpoint {state} for "
                        f"{record['run_id']} in {results}, process 1 finds record none, checkpoint none; expected "
                        "--results-dir to be one folder shared by every machine"]
    assert records_in(own[0]) == records_in(own[1]) == []
