"""Reports from the records of the real 12-run smoke suite (`python -m bench.run`), and the Pareto front."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from bench.plots import pareto_front
from bench.report import Filters, NoRecordsError, build_parser, main as report_main, write_report
from bench.tables import ACCURACY_KEYS, SPEED_KEYS, gains_table
from helpers import records_in, run_module
from models import model_names

DATASETS = ("mnist", "cifar10")
# Most tests here read the session's smoke suite, which the first of them runs (slow); the rest are quick.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_runner_prints_summary_and_writes_report(smoke_suite) -> None:
    assert "### Test accuracy (%)" in smoke_suite.stdout and "### Training speed" in smoke_suite.stdout
    assert (smoke_suite.results / "REPORT.md").is_file()


def test_tables_have_expected_rows_and_columns(smoke_suite, tmp_path: Path) -> None:
    results = smoke_suite.copy_results(tmp_path / "results")
    report = write_report(results)
    accuracy = report.accuracy
    study_models = list(model_names())
    assert list(accuracy["model"]) == study_models * len(DATASETS)  # data source, dataset, then model order
    assert list(accuracy["dataset"]) == [dataset for dataset in DATASETS for _ in study_models]
    assert set(ACCURACY_KEYS + ["n", "test acc %", "test acc % std", "study %", "diff pp"]) <= set(accuracy.columns)
    assert (accuracy["n"] == 1).all() and accuracy["test acc % std"].isna().all()  # one seed: no spread
    assert set(accuracy["recipe"]) == {"fast"} and set(accuracy["preset"]) == {"smoke"}
    # Synthetic data is labelled as such and never set against the study's numbers.
    assert set(accuracy["data_source"]) == {"synthetic"}
    assert accuracy[["study %", "diff pp", "study train s"]].isna().all().all()
    text = report.report_path.read_text()
    assert "Synthetic data" in text
    assert "- `train img/s`: Training images per second in the timed window" in text  # the metric's own words

    speed = report.speed
    assert set(SPEED_KEYS) <= set(speed.columns) and speed["device"].str.startswith("CPU").all()
    assert (speed["train img/s"] > 0).all() and (speed["eval img/s"] > 0).all()
    assert (speed["peak alloc MiB"] > 100).all() and (speed["params M"] > 5).all()  # MiB, not bytes
    assert (speed["world size"] == 1).all() and (speed["batch"] == 16).all()

    gains = report.gains  # one recipe (fast) for both twins: each improved model's gain is all architecture
    improved = [model for model in study_models if model.endswith("_improved")]
    assert sorted(gains["model"]) == sorted(improved * len(DATASETS))
    assert (gains["recipe part pp"] == 0).all() and (gains["arch part pp"] == gains["gain pp"]).all()
    assert report.failures.empty and report.sweep.empty and report.skipped == []
    frames = {"accuracy": accuracy, "gains": gains, "speed": speed, "speed_sweep": report.sweep,
              "failures": report.failures}
    assert set(report.csv_paths) == set(frames)
    for name, path in report.csv_paths.items():
        assert path.parent == results / "tables"
        written = pd.read_csv(path)
        assert list(written.columns) == list(frames[name].columns) and len(written) == len(frames[name])
    assert report.summary_markdown.startswith("### Test accuracy (%)") and "### Training speed" in report.summary_markdown


def test_seeds_aggregate_to_mean_and_std(smoke_suite, tmp_path: Path) -> None:
    """Two more seeds of one configuration, hand-made from its real record, aggregate to mean and sample std."""
    results = smoke_suite.copy_results(tmp_path / "results")
    (record,) = [r for r in records_in(results) if (r["model"], r["dataset"]) == ("resnet18", "mnist")]
    values = [record["metrics"]["test_acc"], 0.4, 0.7]
    for seed, value in enumerate(values[1:], start=1):
        twin = json.loads(json.dumps(record))
        twin.update(run_id=f"{record['run_id']}-seed{seed}", seed=seed)
        twin["metrics"]["test_acc"] = value
        (results / "runs" / f"{twin['run_id']}.json").write_text(json.dumps(twin))
    accuracy = write_report(results).accuracy.set_index(["model", "dataset"])
    row = accuracy.loc[("resnet18", "mnist")]
    assert row["n"] == 3
    assert row["test acc %"] == pytest.approx(statistics.mean(values) * 100)
    assert row["test acc % std"] == pytest.approx(statistics.stdev(values) * 100)


def test_plots_are_written_and_linked(smoke_suite) -> None:
    results = smoke_suite.results
    names = {path.name for path in (results / "plots").glob("*.png")}
    for dataset in DATASETS:
        assert {f"accuracy_vs_time_{dataset}_synthetic.png", f"val_accuracy_{dataset}_synthetic.png"} <= names
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (results / "REPORT.md").read_text())
    assert sorted(links) == sorted(f"plots/{name}" for name in names)
    for link in links:
        data = (results / link).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(results.rglob("*.tmp"))


def test_corrupt_record_is_skipped_and_named(smoke_suite, tmp_path: Path) -> None:
    results = smoke_suite.copy_results(tmp_path / "results")
    original = sorted((results / "runs").glob("*.json"))[0]
    corrupt = results / "runs" / f"corrupt-{original.name}"
    corrupt.write_bytes(original.read_bytes()[:40] + b"\x00garbage")
    fieldless = results / "runs" / "fieldless.json"
    fieldless.write_text('{"status": "finished"}')
    done = run_module("bench.report", "--results-dir", str(results))
    assert done.returncode == 0, done.stderr
    report_text = (results / "REPORT.md").read_text()
    for path, reason in ((corrupt, "not valid JSON"), (fieldless, "missing fields")):
        assert f"{path}: {reason}" in done.stdout.replace("`", "")
        assert f"runs/{path.name}`: {reason}" in report_text
    accuracy = pd.read_csv(results / "tables" / "accuracy.csv")
    assert len(accuracy) == 12 and (accuracy["n"] == 1).all()


def test_empty_folder_is_one_clear_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report_main(["--results-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "no run records" in err and str(tmp_path) in err
    assert not (tmp_path / "REPORT.md").exists()


def test_filters_select_records(smoke_suite, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = smoke_suite.copy_results(tmp_path / "results")
    mnist = write_report(results, Filters(device="cpu", dataset="mnist", preset="smoke")).accuracy
    assert len(mnist) == 6 and set(mnist["dataset"]) == {"mnist"}
    with pytest.raises(NoRecordsError, match="match the filters"):
        write_report(results, Filters(dataset="fashion_mnist"))
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--since", "yesterday"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_gain_splits_into_recipe_and_architecture(smoke_suite, tmp_path: Path) -> None:
    """Gains from the smoke run's accuracy row, relabelled as the study's models and recipes (plus offsets)."""
    row = write_report(smoke_suite.copy_results(tmp_path / "results")).accuracy.iloc[[0]]
    vanilla = float(row["test acc %"].iloc[0])

    def table(*rows: tuple[str, str, float]) -> pd.DataFrame:
        return pd.concat([row.assign(model=model, recipe=recipe, **{"test acc %": vanilla + offset})
                          for model, recipe, offset in rows], ignore_index=True)

    # Ablation: the vanilla architecture also trained with the improved recipe.
    gains = gains_table(table(("resnet18", "paper-vanilla", 0.0), ("resnet18", "paper-improved", 2.0),
                              ("resnet18_improved", "paper-improved", 5.0)))
    assert len(gains) == 1
    ablation = gains.iloc[0]
    assert (ablation["model"], ablation["vanilla"]) == ("resnet18_improved", "resnet18")
    assert (ablation["vanilla recipe"], ablation["recipe"]) == ("paper-vanilla", "paper-improved")
    assert ablation[["gain pp", "recipe part pp", "arch part pp"]].tolist() == pytest.approx([5.0, 2.0, 3.0])
    # The study's pairing without an ablation: a total gain that cannot be split.
    paired = gains_table(table(("resnet18", "paper-vanilla", 0.0), ("resnet18_improved", "paper-improved", 4.0))).iloc[0]
    assert paired["gain pp"] == pytest.approx(4.0) and pd.isna(paired["recipe part pp"]) and pd.isna(paired["arch part pp"])
    # One recipe for both: the whole gain is architecture.
    same = gains_table(table(("resnet18", "fast", 0.0), ("resnet18_improved", "fast", 1.5))).iloc[0]
    assert same[["gain pp", "recipe part pp", "arch part pp"]].tolist() == pytest.approx([1.5, 0.0, 1.5])
    # No vanilla twin, no row.
    assert gains_table(table(("vgg16_improved", "fast", 1.0))).empty


def test_pareto_front_on_known_points() -> None:
    points = [(1.0, 0.50), (2.0, 0.70), (2.0, 0.60), (3.0, 0.70), (0.5, 0.40), (4.0, 0.90), (4.0, 0.90), (5.0, 0.85)]
    # (2, .6) and (3, .7) are beaten by (2, .7); (5, .85) by (4, .9); equal points do not beat each other.
    assert pareto_front(points) == [True, True, False, False, True, True, True, False]
    assert pareto_front([]) == [] and pareto_front([(1.0, 0.1)]) == [True]
