"""Merging results folders and comparing with a baseline, on copies of the smoke suite's real records (hand-edited
where a test needs particular numbers)."""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from bench.report import main as report_main
from bench.reporting.compare import NOISE_FLOOR_PCT, NOISE_SIGMAS, comparison_table, load_merged, regressions
from bench.reporting.tables import run_rows
from bench.results.records import write_record
from bench.results.schema import RunRecord
from helpers import records_in

H100 = "NVIDIA H100 80GB HBM3"


def edit(results: Path, model: str, dataset: str, change) -> RunRecord:
    """Apply `change` to the record of (model, dataset) under `results` and write it back."""
    (record,) = [r for r in records_in(results) if (r.model, r.dataset) == (model, dataset)]
    change(record)
    write_record(results, record)
    return record


def add_record(folder: Path, record: RunRecord, name: str) -> None:
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{name}.json").write_text(json.dumps(record.to_json()))


def on_device(record: RunRecord, device: str, **changes) -> RunRecord:
    """A copy of `record` as if measured on `device`."""
    return replace(record, env={**record.env, "device_name": device}, **changes)


def test_the_same_run_on_the_same_device_kind_counts_once(smoke_suite, tmp_path: Path) -> None:
    first = smoke_suite.copy_results(tmp_path / "first")
    records = {(r.model, r.dataset): r for r in records_in(first)}
    second = tmp_path / "second"
    crashed = replace(records[("vgg16", "mnist")], status="failed", finished_at="2099-01-01T00:00:00+0000")
    rerun = replace(records[("resnet18", "mnist")], finished_at="2099-01-01T00:00:00+0000", error="the rerun")
    elsewhere = on_device(records[("resnet18", "cifar10")], H100)
    for name, record in (("crashed", crashed), ("rerun", rerun), ("elsewhere", elsewhere)):
        add_record(second, record, name)

    merged = load_merged([first, second])
    assert merged.dropped == 2 and len(merged.runs) == 13 and merged.skipped == []
    kept = {(r.run_id, r.device): r for r in merged.runs}
    assert kept[(crashed.run_id, crashed.device)].status == "finished"  # finished beats a later crash
    assert kept[(rerun.run_id, rerun.device)].error == "the rerun"  # of two finished, the later
    assert (elsewhere.run_id, H100) in kept  # the same run on another device kind is another result


def test_sweep_points_merge_the_same_way(tmp_path: Path) -> None:
    point = {"schema": 2, "model": "resnet18", "dataset": "mnist", "mode": "train", "precision": "bf16",
             "channels_last": True, "compile": "off", "batch_size": 256, "data": "synthetic", "world_size": 1,
             "env": {"device_name": H100}}
    for folder, extra in (("a", {"status": "ok", "measured_at": "2026-01-01T00:00:00+0000"}),
                          ("b", {"status": "oom", "measured_at": "2026-02-01T00:00:00+0000"})):
        (tmp_path / folder / "speed").mkdir(parents=True)
        (tmp_path / folder / "speed" / "point.json").write_text(json.dumps({**point, **extra}))
    merged = load_merged([tmp_path / "a", tmp_path / "b"])
    assert merged.dropped == 1 and [sweep.status for sweep in merged.sweeps] == ["ok"]


def test_baseline_differences_have_the_expected_signs_and_noise(smoke_suite, tmp_path: Path) -> None:
    baseline = smoke_suite.copy_results(tmp_path / "baseline")
    current = smoke_suite.copy_results(tmp_path / "current")

    def slower_better_bigger(record: RunRecord) -> None:
        record.metrics["train_images_per_s"] *= 0.8
        record.metrics["test_acc"] += 0.02
        record.metrics["peak_mem_allocated_bytes"] *= 1.1

    def scale_rate(factor: float):
        def change(record: RunRecord) -> None:
            record.metrics["train_images_per_s"] *= factor
        return change

    def noisy(rates: list[float]):
        def change(record: RunRecord) -> None:
            record.history = [{**record.history[0], "train_images_per_s": rate} for rate in rates]
        return change

    edit(current, "resnet18", "mnist", slower_better_bigger)
    edit(current, "inception_v1", "mnist", scale_rate(0.97))  # within the 5 % floor
    edit(current, "vgg16", "mnist", scale_rate(1.3))  # faster is never a regression
    # A run whose own evaluations spread widely: 20 % slower is inside its noise.
    edit(current, "resnet18", "cifar10", lambda record: (scale_rate(0.8)(record), noisy([80.0, 120.0])(record)))
    edit(baseline, "resnet18", "cifar10", noisy([100.0, 140.0]))

    table = comparison_table(run_rows(records_in(current)), run_rows(records_in(baseline))).set_index(
        ["model", "dataset"])
    assert len(table) == 12 and (table["device"] == table["baseline_device"]).all()
    hit = table.loc[("resnet18", "mnist")]
    assert hit["acc_diff_pp"] == pytest.approx(2.0) and hit["images_per_s_change_pct"] == pytest.approx(-20.0)
    assert hit["peak_mem_change_pct"] == pytest.approx(10.0) and hit["noise_pct"] == NOISE_FLOOR_PCT
    assert hit["regression"]
    assert table.loc[("inception_v1", "mnist"), "images_per_s_change_pct"] == pytest.approx(-3.0)
    assert table.loc[("vgg16", "mnist"), "images_per_s_change_pct"] == pytest.approx(30.0)
    spread = table.loc[("resnet18", "cifar10")]
    cv = [statistics.stdev(rates) / statistics.mean(rates) for rates in ([80.0, 120.0], [100.0, 140.0])]
    assert spread["noise_pct"] == pytest.approx(NOISE_SIGMAS * 100 * (cv[0] ** 2 + cv[1] ** 2) ** 0.5)
    assert spread["images_per_s_change_pct"] == pytest.approx(-20.0) and not spread["regression"]
    assert list(table.index[table["regression"].astype(bool)]) == [("resnet18", "mnist")]
    untouched = table.drop(index=[("resnet18", "mnist"), ("inception_v1", "mnist"), ("vgg16", "mnist"),
                                  ("resnet18", "cifar10")])
    assert (untouched[["acc_diff_pp", "images_per_s_change_pct", "peak_mem_change_pct"]] == 0).all().all()
    (phrase,) = regressions(table.reset_index())
    assert phrase.startswith("resnet18 on mnist (recipe fast, 1 epoch, batch 16 x 1 process") and "-20.0 %" in phrase


def test_a_device_is_compared_with_itself_when_both_sides_have_it(smoke_suite, tmp_path: Path) -> None:
    a100 = "NVIDIA A100-SXM4-80GB"
    folder = smoke_suite.copy_results(tmp_path / "results")
    original = next(r for r in records_in(folder) if (r.model, r.dataset) == ("resnet18", "mnist"))
    fast = on_device(original, H100, metrics={**original.metrics, "train_images_per_s": 50_000.0})
    slow = on_device(original, a100, metrics={**original.metrics, "train_images_per_s": 20_000.0})
    for name, record in (("fast", fast), ("slow", slow)):
        add_record(folder, record, name)
    rows = run_rows(records_in(folder))
    table = comparison_table(rows, rows)  # a folder against itself: nothing changed, nothing flagged
    pairs = table[(table["model"] == "resnet18") & (table["dataset"] == "mnist")]
    assert sorted(pairs["device"]) == sorted(pairs["baseline_device"]) == sorted([original.device, H100, a100])
    assert not table["regression"].astype(bool).any()
    # With no device in common, the new machine is set against the old one.
    only_a100 = comparison_table(run_rows([fast]), run_rows([slow]))
    assert list(only_a100["baseline_device"]) == [a100] and only_a100["images_per_s_change_pct"].iloc[0] == pytest.approx(150.0)


def test_merge_baseline_and_fail_on_regression_from_the_command_line(smoke_suite, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    baseline = smoke_suite.copy_results(tmp_path / "baseline")
    current = smoke_suite.copy_results(tmp_path / "current")
    rerun = edit(current, "resnet18", "mnist", lambda record: record.metrics.update(
        train_images_per_s=record.metrics["train_images_per_s"] * 0.5))
    other = tmp_path / "other"  # a second folder holding a crashed copy of the same run: merged away
    add_record(other, replace(rerun, status="failed", finished_at="2099-01-01T00:00:00+0000"), "crashed")
    out, suite_report = tmp_path / "out", (current / "REPORT.md").read_text()

    assert report_main(["--results-dir", str(current), str(other), "--out", str(out), "--baseline", str(baseline),
                        "--fail-on-regression", "--dataset", "mnist"]) == 1
    printed, error = capsys.readouterr()
    assert len(error.strip().splitlines()) == 1 and "resnet18 on mnist" in error and "-50.0 %" in error
    assert "Dropped 1 duplicate record(s)" in printed and "### Against the baseline" in printed
    text = (out / "REPORT.md").read_text()
    assert f"in {current}, {other} (1 duplicate(s) dropped" in text and f"baseline ({baseline})" in text
    assert (current / "REPORT.md").read_text() == suite_report  # written to --out, not to the first folder
    assert (out / "tables" / "comparison.csv").is_file() and (out / "tables" / "comparison.md").is_file()

    # The same comparison where nothing regressed exits 0, even with --fail-on-regression.
    assert report_main(["--results-dir", str(current), "--out", str(out), "--baseline", str(baseline),
                        "--fail-on-regression", "--dataset", "cifar10"]) == 0
    assert "No throughput regression beyond the noise." in capsys.readouterr().out


def test_fail_on_regression_needs_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--results-dir", str(tmp_path), "--fail-on-regression"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--fail-on-regression" in line and "--baseline" in line
