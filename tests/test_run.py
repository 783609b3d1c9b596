"""End-to-end tests of the benchmark runner: real subprocesses, real FFCV files, real accelerate launches."""
from __future__ import annotations

import importlib.util
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.results.records import write_record
from bench.results.schema import RunRecord
from bench.run import main as run_main
from bench.suite.config import parse_suite
from helpers import REPO, TINY, records_in, run_bench
from models import model_names


@pytest.mark.slow
def test_smoke_suite_writes_a_complete_record_per_model_and_dataset(smoke_suite):
    results = smoke_suite.results  # two shards, each exited 0 (tests/conftest.py)
    records = records_in(results)
    assert sorted((r.model, r.dataset) for r in records) == sorted(
        (m, d) for m in model_names() for d in ("mnist", "cifar10"))
    for record in records:
        metrics = record.metrics
        assert record.status == "finished", record.error
        assert record.data_source == "synthetic"
        for key in ("train_acc", "val_acc", "best_val_acc", "test_acc"):
            assert 0.0 <= metrics[key] <= 1.0, key
        for key in ("train_loss", "val_loss", "test_loss"):
            assert math.isfinite(metrics[key]) and metrics[key] > 0, key
        for key in ("train_images_per_s", "eval_images_per_s", "epoch_time_s", "train_time_s", "eval_time_s",
                    "peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "achieved_tflops"):
            assert metrics[key] > 0, key
        assert metrics["peak_tflops"] is None and metrics["mfu"] is None  # no trustworthy peak on a CPU
        assert 0.0 <= metrics["data_stall"] < 1.0
        assert metrics["best_val_epoch"] == 1 and metrics["epochs_completed"] == 1
        assert record.facts["params"] > 1_000_000 and record.facts["train_gflops"] > record.facts["forward_gflops"]
        env = record.env
        for key in ("torch", "accelerate", "ffcv", "device_name", "num_processes", "mixed_precision"):
            assert env[key], key
        assert record.config["batch_size"] == 16 and record.global_batch_size == 16
        assert len(record.history) == 1
        # The whole trade-off (bench/training/probes.py): the trained model's inference, cold start, cost, machine, energy.
        latency = [metrics[f"infer_{q}_ms"] for q in ("p50", "p95", "p99")]
        assert 0 < latency[0] <= latency[1] <= latency[2] and metrics["infer_images_per_s"] > 0
        assert record.inference["eager"]["throughput"]["status"] == "ok" and record.inference["compiled"] is None
        assert metrics["compiled_infer_p50_ms"] is None and metrics["compile_s"] is None  # eager runs
        assert 0 < metrics["time_to_first_step_s"] < metrics["wall_time_s"]
        assert metrics["price_per_hour_usd"] == 2.5
        assert metrics["cost_usd"] == pytest.approx(2.5 * metrics["wall_time_s"] / 3600)
        assert env["machine"]["cpu"]["logical_cpus"] > 0 and "gpu" not in env["machine"]
        if metrics["energy_kwh"] is None:  # no RAPL here: empty, and says why
            assert metrics["energy_source"].startswith("no RAPL counter readable")
        else:
            assert metrics["energy_kwh"] > 0 and metrics["energy_source"].startswith("RAPL")
        assert metrics["device_throttled"] is None and metrics["device_shared"] is None  # a CPU cannot tell
    tables = (results / "REPORT.md").read_text()
    assert "resnet18_improved" in tables and "Test accuracy" in tables
    assert not (results / "checkpoints").exists() or not any((results / "checkpoints").iterdir())


def test_a_shard_with_no_runs_succeeds_idle(tmp_path):
    # Two runs in four parts (a SLURM array larger than the suite): parts 3 and 4 have nothing to do.
    argv = TINY + ["--models", "resnet18", "--datasets", "mnist", "--seeds", "0", "1", "--shard", "4/4",
                   "--results-dir", str(tmp_path / "results")]
    assert run_main(argv) == 0
    assert records_in(tmp_path / "results") == [] and not (tmp_path / "results" / "checkpoints").exists()


@pytest.mark.slow
def test_learning_is_real_and_a_reachable_target_stops_the_run_early(tmp_path, cache_dir):
    done = run_bench(["--preset", "smoke", "--models", "resnet18", "--datasets", "cifar10", "--profile",
                      "--synthetic-size", "400", "120", "--epochs", "4", "--stop-at-target", "--target-accuracy", "60",
                      "--eval-every", "4"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records_in(tmp_path)
    metrics, history = record.metrics, record.history
    assert (tmp_path / "profiles" / record.run_id / "trace.json").stat().st_size > 0
    # Ten balanced classes: chance is 10 %. The run stopped at the first validation at or above 60 %.
    assert record.status == "finished" and metrics["reached_target"] is True
    assert history[-1]["val_acc"] >= 0.6 > max(row["val_acc"] for row in history[:-1])
    assert metrics["epochs_completed"] == history[-1]["epoch"] < 4 and metrics["test_acc"] > 0.5
    assert [row["step"] for row in history] == [4 * (i + 1) for i in range(len(history))]  # every 4 steps
    # Ten steps an epoch: the row at step 12 straddles the first epoch's end and still covers 4 steps.
    assert [row["train_images"] for row in history] == [4 * record.global_batch_size] * len(history)
    assert metrics["time_to_target_s"] == pytest.approx(sum(row["train_time_s"] for row in history))
    # Wall clock counts data preparation, model build and every validation: more than training alone.
    assert metrics["time_to_target_wall_s"] == history[-1]["elapsed_s"] > metrics["time_to_target_s"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.slow
def test_profiling_two_processes_opens_their_timed_window_at_one_step(tmp_path, cache_dir):
    # Only the main process profiles, yet every process must open its timed window after the same steps: the window
    # opens at a barrier, and a process reaching it a step apart from the others meets their gradient all-reduce
    # there (the run hangs).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bench.run"]
    done = run_bench([*TINY, "--synthetic-size", "400", "120", "--epochs", "1", "--no-inference", "--models",
                      "resnet18", "--datasets", "mnist", "--profile"], tmp_path, cache_dir, launcher=launcher,
                     timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records_in(tmp_path)
    assert record.status == "finished" and record.world_size == 2 and record.metrics["train_images_per_s"] > 0
    assert (tmp_path / "profiles" / record.run_id / "trace.json").stat().st_size > 0


@pytest.mark.slow
def test_resume_after_kill_completes_the_run_and_skips_finished_ones(tmp_path, cache_dir):
    # A target out of reach (a learning rate too small to learn anything in three epochs) under
    # --stop-at-target: the run trains all its epochs and says it never got there.
    # Validation every 5 steps does not divide an epoch: the checkpoint holds steps no row covers yet.
    args = TINY + ["--models", "resnet18", "--datasets", "mnist", "--epochs", "3", "--synthetic-size", "240", "32",
                   "--checkpoint-minutes", "0", "--stop-at-target", "--target-accuracy", "90", "--lr", "1e-7",
                   "--eval-every", "5"]
    command = [sys.executable, "-m", "bench.run", *args, "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress_files = tmp_path / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            found = list(progress_files.glob("*/progress.json"))
            if found and json.loads(found[0].read_text())["epoch"] >= 1:
                break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    progress = json.loads(next(progress_files.glob("*/progress.json")).read_text())
    assert progress["epoch"] < 3, "the run finished before it could be killed"
    assert records_in(tmp_path) == []  # a killed run leaves no record

    resumed = run_bench(args + ["--resume"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (record,) = records_in(tmp_path)
    assert record.status == "finished"
    history = record.history
    assert history[-1]["epoch"] == 3 and history[: len(progress["history"])] == progress["history"]
    # The steps trained before the kill and not yet in a row are in the first row after the resume.
    assert progress["pending"]["steps"] > 0
    assert [row["train_images"] for row in history[:-1]] == [5 * 16] * (len(history) - 1)
    assert sum(row["train_images"] for row in history) == history[-1]["step"] * 16
    assert record.metrics["checkpoint_s"] > 0 and record.metrics["checkpoint_s"] >= progress["checkpoint_s"]
    assert record.metrics["reached_target"] is False and record.metrics["time_to_target_s"] is None
    assert record.metrics["epochs_completed"] == 3
    assert not (tmp_path / "checkpoints" / record.run_id).exists()

    path = tmp_path / "runs" / f"{record.run_id}.json"
    before = path.stat().st_mtime_ns
    # The runner once more, in this process: the finished run is skipped, its record untouched.
    assert run_main(args + ["--resume", "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)]) == 0
    assert path.stat().st_mtime_ns == before and records_in(tmp_path) == [record]


@pytest.mark.slow
def test_divergence_is_recorded_and_the_suite_goes_on(tmp_path, cache_dir):
    done = run_bench(TINY + ["--models", "resnet18", "inception_v1", "--datasets", "mnist", "--epochs", "2",
                             "--lr", "1e30"], tmp_path, cache_dir)
    assert done.returncode == 1
    records = records_in(tmp_path)
    assert sorted(r.model for r in records) == ["inception_v1", "resnet18"]
    assert {r.status for r in records} == {"diverged"} and all("became" in r.error for r in records)
    assert all(r.facts["params"] > 1_000_000 for r in records)  # a result like any other: the model's facts with it
    assert not list((tmp_path / "checkpoints").glob("*/progress.json"))  # final runs leave no checkpoint
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "runs").glob("*.json")}

    again = run_main(TINY + ["--models", "resnet18", "inception_v1", "--datasets", "mnist", "--epochs", "2",
                             "--lr", "1e30", "--resume", "--results-dir", str(tmp_path), "--cache-dir", str(cache_dir)])
    assert again == 1  # in this process: both runs are final, skipped, and still not finished
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "runs").glob("*.json")} == written


@pytest.mark.parametrize("args, expected", [
    (["--models", "resnet99"], "invalid choice: 'resnet99'"),
    (["--datasets", "imagenet"], "invalid choice: 'imagenet'"),
    (["--preset", "turbo"], "invalid choice: 'turbo'"),
    (["--epochs", "-1"], "expected a positive integer"),
    (["--batch-size", "0"], "expected a positive integer"),
    (["--plugin", "no_such_module"], "--plugin no_such_module: cannot import it (ModuleNotFoundError"),
])
def test_bad_options_fail_fast_with_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the runner's own parser, in this process
        parse_suite(args, gpu_available=False, num_processes=1)
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(message.splitlines()) == 1 and expected in message, message
    assert message.startswith("bench/run.py: error:")
    if "invalid choice" in expected and "models" in args[0]:
        assert all(name in message for name in model_names())  # the valid names are listed


def test_results_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--results-dir", str(not_a_folder)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0] == (f"bench/run.py: error: argument --results-dir: {not_a_folder} is a file; "
                        "expected a folder for the results")
    assert not_a_folder.read_text() == "mine"


def test_fp16_on_cpu_is_refused_clearly(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid on a GPU")
    assert run_main(["--precision", "fp16", "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("bench/run.py: error: --precision fp16: fp16 needs a CUDA GPU; use bf16 "
                                               "(or no) on this device")
    assert not (tmp_path / "runs").exists()


def test_a_tracker_that_is_not_installed_is_one_line_naming_its_extra(tmp_path, capsys):
    pytest.importorskip("tensorboard")  # installed: the one that works
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert run_main(["--log-with", "wandb", "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("bench/run.py: error: --log-with wandb: the wandb package is not "
                                               "installed; pip install 'deepnets-bench[wandb]'")


@pytest.mark.slow
def test_accelerate_cpu_launch_of_several_processes_says_how_to_get_them(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "bench" / "run.py")]
    done = subprocess.run(launcher + ["--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("bench/run.py: error:")]
    assert ours == ["bench/run.py: error: accelerate launch --cpu with several processes starts only one without MPI; "
                    "for several CPU processes use: accelerate launch --multi_gpu --num_processes N bench/run.py ..."]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_retries_a_run_that_crashed(tmp_path, cache_dir):
    args = TINY + ["--models", "resnet18", "--datasets", "mnist", "--epochs", "1"]
    (cfg,) = parse_suite(args, gpu_available=False, num_processes=1).runs
    crashed = RunRecord(run_id=cfg.run_id, status="failed", config=cfg.to_json(), error="RuntimeError('crash')")
    write_record(tmp_path, crashed)  # as the runner writes a run that raised
    again = run_bench(args + ["--resume"], tmp_path, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    (record,) = records_in(tmp_path)
    assert record.status == "finished" and record.error is None and len(record.history) == 1  # trained again


def test_each_run_keeps_an_exact_confusion_matrix_of_its_test_pass(smoke_suite):
    for record in records_in(smoke_suite.results):
        confusion, per_class = record.test_confusion, record.test_per_class_acc
        assert len(confusion) == len(per_class) == len(record.class_names) == 10
        assert sum(map(sum, confusion)) == 21  # every test image once
        assert sum(confusion[i][i] for i in range(10)) / 21 == pytest.approx(record.metrics["test_acc"])
        for i, row in enumerate(confusion):
            assert per_class[i] == pytest.approx(row[i] / sum(row) if sum(row) else 0.0)


def test_a_checkpoint_another_version_wrote_is_one_line_not_a_silent_restart(tmp_path, cache_dir, capsys):
    """progress.json with a field this version does not know: --resume stops before training, names the file and
    what to do, and leaves the saved state as it was."""
    args = TINY + ["--models", "resnet18", "--datasets", "mnist", "--epochs", "2", "--results-dir", str(tmp_path),
                   "--cache-dir", str(cache_dir)]
    (cfg,) = parse_suite(args, gpu_available=False, num_processes=1).runs
    folder = tmp_path / "checkpoints" / cfg.run_id
    (folder / "epoch-0001").mkdir(parents=True)
    progress = {"state": "epoch-0001", "epoch": 1, "step": 3, "history": [], "a_field_from_elsewhere": 1}
    (folder / "progress.json").write_text(json.dumps(progress))
    assert run_main(args + ["--resume"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench/run.py: error:")]
    assert str(folder / "progress.json") in line and "a_field_from_elsewhere" in line and str(folder) in line
    assert json.loads((folder / "progress.json").read_text()) == progress and (folder / "epoch-0001").is_dir()
    assert records_in(tmp_path) == []
