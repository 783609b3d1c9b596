"""The metric declarations: exact record fields, report scaling, and seed aggregation (MLPerf's rule for time
to target) on hand-made runs."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.measuring.metrics import BY_KEY, HISTORY_KEYS, RUN_KEYS, aggregate, history_row, markdown_glossary, run_metrics
from bench.reporting.columns import column, glossary, label


def runs(times: list[float | None], accuracies: list[float] | None = None) -> pd.DataFrame:
    """One row per seed of one configuration, as the report's run table holds them."""
    return pd.DataFrame({"time_to_target_s": [math.nan if t is None else t for t in times],
                         "target_accuracy": 0.99, "test_acc": accuracies or [0.99] * len(times),
                         "peak_mem_allocated_bytes": [2**30, 3 * 2**30, 2**30, 2**30, 2**30][: len(times)]})


def test_five_runs_drop_the_fastest_and_the_slowest():
    out = aggregate(runs([10.0, 12.0, 14.0, 16.0, 100.0]), ["time_to_target_s"])
    assert out["time_to_target_s"] == pytest.approx(14.0) and out["reached"] == "5/5"
    assert out["time_to_target_s_std"] == pytest.approx(statistics.stdev([12.0, 14.0, 16.0]))


def test_one_miss_in_five_is_the_slowest_and_is_dropped_but_counted():
    out = aggregate(runs([10.0, 12.0, 14.0, 16.0, None]), ["time_to_target_s"])
    assert out["time_to_target_s"] == pytest.approx(14.0) and out["reached"] == "4/5"


def test_two_misses_in_five_leave_no_time_only_the_count():
    out = aggregate(runs([10.0, 12.0, 14.0, None, None]), ["time_to_target_s"])
    assert math.isnan(out["time_to_target_s"]) and out["reached"] == "3/5"


def test_fewer_than_five_runs_average_those_that_reached_it():
    out = aggregate(runs([10.0, 12.0, None]), ["time_to_target_s"])
    assert out["time_to_target_s"] == pytest.approx(11.0) and out["reached"] == "2/3"
    assert out["time_to_target_s_std"] == pytest.approx(statistics.stdev([10.0, 12.0]))
    none = aggregate(runs([None, None]), ["time_to_target_s"])
    assert math.isnan(none["time_to_target_s"]) and none["reached"] == "0/2"


def test_reaching_the_target_is_counted_over_seeds_and_absent_without_a_target():
    seeds = runs([10.0, None, 12.0]).assign(reached_target=[True, False, True])
    assert aggregate(seeds, ["reached_target"])["reached_target"] == "2/3"
    no_target = runs([None, None]).assign(reached_target=[None, None])
    assert aggregate(no_target, ["reached_target"])["reached_target"] is None


def test_accuracy_is_mean_and_sample_std_in_percent_and_memory_the_worst_seed_in_mib():
    out = aggregate(runs([1.0, 2.0, 3.0], accuracies=[0.90, 0.92, 0.97]), ["test_acc", "peak_mem_allocated_bytes"])
    assert out["test_acc"] == pytest.approx(93.0)
    assert out["test_acc_std"] == pytest.approx(statistics.stdev([90.0, 92.0, 97.0]))
    assert out["peak_mem_allocated_bytes"] == 3 * 1024


def test_records_hold_exactly_the_declared_fields():
    with pytest.raises(KeyError, match=r"missing \['val_acc'\].*undeclared \['typo'\]"):
        history_row(**{key: 0 for key in HISTORY_KEYS if key != "val_acc"}, typo=1)
    row = run_metrics(**{key: 1 for key in reversed(RUN_KEYS)})
    assert list(row) == list(RUN_KEYS)  # declaration order, whatever order the computation used


def test_report_labels_formats_and_explanations_come_from_the_declarations():
    assert column("time_to_target_s_std").fmt == BY_KEY["time_to_target_s"].fmt
    assert [label(name) for name in ("test_acc", "test_acc_std", "world_size", "baseline_device", "speed_up")] == [
        "test acc %", "test acc % std", "world size", "baseline device", "speed-up x"]
    lines = glossary(["model", "test_acc", "data_stall", "n"])
    assert lines == [f"- `test acc %`: {BY_KEY['test_acc'].explanation}",
                     f"- `data stall %`: {BY_KEY['data_stall'].explanation}",
                     f"- `n`: {column('n').meaning}"]


def test_the_measurements_page_shows_the_declared_measurements():
    page = (Path(__file__).resolve().parent.parent / "docs" / "measurements.md").read_text()
    shown = page.split("<!-- metrics:start -->\n", 1)[1].split("\n<!-- metrics:end -->", 1)[0]
    assert shown == markdown_glossary(), "regenerate docs/measurements.md's table with `python -m bench.measuring.metrics`"


def test_top5_counts_the_images_whose_class_is_among_the_five_highest_scores():
    """evaluate() on batches whose 'images' are the scores themselves (the model flattens them): the true class
    ranks 1st, 5th, 6th and 2nd, each image counted once although the last batch repeats one."""
    from accelerate import Accelerator

    from bench.training.loop import evaluate

    scores = torch.arange(120, dtype=torch.float32).flip(0).repeat(4, 1)  # class 0 scores highest, 119 lowest
    labels = torch.tensor([0, 4, 5, 1])
    batches = [(scores[:2], labels[:2], torch.tensor([0, 1])), (scores[1:], labels[1:], torch.tensor([1, 2, 3]))]
    result = evaluate(torch.nn.Flatten(), batches, lambda images: images, 4, Accelerator(cpu=True), num_classes=120,
                      top5=True)
    assert result.top5_acc == pytest.approx(0.75) and result.acc == pytest.approx(0.25)
    assert result.confusion[4][0] == 1 and sum(map(sum, result.confusion)) == 4
    assert evaluate(torch.nn.Flatten(), batches, lambda images: images, 4, Accelerator(cpu=True)).top5_acc is None
