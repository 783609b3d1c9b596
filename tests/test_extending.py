"""Extending the harness from outside the package: a model registered by a plugin file runs through the
real runner and report on the two datasets the study never used (no study numbers, no default target),
logs to TensorBoard through Accelerate, and runs compiled as it does eager; a dataset registered by a plugin
is a choice of every command."""
from __future__ import annotations

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import plugin_env, records_in, run_bench, run_module

pytestmark = pytest.mark.slow  # a real suite in a subprocess

EXAMPLE = "examples/tiny_cnn.py"  # the README's plugin example, loaded by path

DATASET_PLUGIN = '''
"""A dataset a user might add: Kuzushiji-MNIST, MNIST's format and sizes in folders of its own."""
import dataclasses

from data.datasets import DATASETS, register_dataset
from data.formats import IdxFiles

register_dataset(dataclasses.replace(
    DATASETS["mnist"], name="kmnist", title="Kuzushiji-MNIST", mean=(0.1918,), std=(0.3483,),
    class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    source=IdxFiles(folders=("kmnist",), torchvision_class="KMNIST")))
'''


def test_a_plugin_model_runs_the_suite_and_the_report_on_datasets_without_study_numbers(tmp_path, cache_dir):
    results = tmp_path / "results"
    done = run_bench(["--plugin", EXAMPLE, "--models", "tiny_cnn", "--datasets", "fashion_mnist", "cifar100",
                      "--preset", "smoke", "--synthetic-size", "300", "120", "--batch-size", "32", "--epochs", "2",
                      "--warmup-steps", "1", "--log-with", "tensorboard"], results, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]

    records = {record.dataset: record for record in records_in(results)}
    assert set(records) == {"fashion_mnist", "cifar100"}
    for dataset, record in records.items():
        assert record.status == "finished" and record.model == "tiny_cnn"
        assert record.metrics["target_accuracy"] is None and record.metrics["time_to_target_s"] is None
    # The builder got each dataset's channels and classes: 2 more input channels (16 x 9 weights each) and
    # 90 more classes (32 weights + 1 bias each).
    assert records["cifar100"].facts["params"] - records["fashion_mnist"].facts["params"] == 2 * 16 * 9 + 90 * 33
    # Ten synthetic classes are learnt within two epochs (chance: 10 %); a hundred from 2-3 images each are not,
    # but every one of the 120 test images is scored.
    assert records["fashion_mnist"].metrics["test_acc"] > 0.3
    assert round(records["cifar100"].metrics["test_acc"] * 120, 3).is_integer()

    # Each run is a TensorBoard run of its own: every history row at its step, the final metrics at the end.
    for record in records.values():
        events = EventAccumulator(str(results / "trackers" / record.run_id / "deepnets-bench"))
        events.Reload()
        (final,) = events.Scalars("final/test_acc")
        assert final.value == pytest.approx(record.metrics["test_acc"]) and final.step == record.history[-1]["step"]
        assert [(e.step, e.value) for e in events.Scalars("val/val_acc")] == [
            (row["step"], pytest.approx(row["val_acc"])) for row in record.history]

    # The report is a separate process that never imports the plugin: unknown models still get rows.
    report = run_module("bench.report", "--results-dir", str(results))
    assert report.returncode == 0, report.stderr
    accuracy = pd.read_csv(results / "tables" / "accuracy.csv")
    assert list(accuracy["dataset"]) == ["fashion_mnist", "cifar100"] and set(accuracy["model"]) == {"tiny_cnn"}
    assert accuracy[["study %", "diff pp", "study train s"]].isna().all().all()
    assert (results / "plots" / "accuracy_vs_time_cifar100_synthetic.png").stat().st_size > 1000

    # The same run through torch.compile (inductor on the CPU): two graphs (training, and evaluation with its
    # partial last batches padded) and no recompilation, the same learning as eager.
    compiled = run_bench(["--plugin", EXAMPLE, "--models", "tiny_cnn", "--datasets", "fashion_mnist",
                          "--preset", "smoke", "--synthetic-size", "300", "120", "--batch-size", "32", "--epochs", "2",
                          "--warmup-steps", "1", "--compile"], results, cache_dir)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    (record,) = [r for r in records_in(results) if r.config["compile_mode"] == "default"]
    eager = records["fashion_mnist"]
    assert record.status == "finished" and record.metrics["compiled_graphs"] == 2
    assert eager.metrics["compiled_graphs"] is None
    assert abs(record.metrics["test_acc"] - eager.metrics["test_acc"]) <= 0.05
    assert [row["val_acc"] for row in record.history] == pytest.approx(
        [row["val_acc"] for row in eager.history], abs=0.1)


def test_a_plugin_dataset_is_a_choice_of_every_command(tmp_path):
    env = plugin_env(tmp_path, "my_data", DATASET_PLUGIN)
    prepared = run_module("data.prepare", "--plugin", "my_data", "--datasets", "kmnist", "--synthetic",
                          "--cache-dir", str(tmp_path / "cache"), env=env)
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.count("kmnist") == 3  # train, val and test encoded
    for module, option in (("bench.overhead", "--dataset"), ("data.throughput", "--datasets")):
        assert run_module(module, "--plugin", "my_data", option, "kmnist", "--help", env=env).returncode == 0, module
    reported = run_module("bench.report", "--plugin", "my_data", "--dataset", "kmnist", "--results-dir", str(tmp_path),
                          env=env)
    assert reported.stderr.startswith("python -m bench.report: error: no run records in")  # the choice was valid
    refused = run_module("bench.report", "--dataset", "kmnist", "--results-dir", str(tmp_path), env=env)
    assert refused.returncode == 2 and "invalid choice: 'kmnist'" in refused.stderr  # without the plugin
