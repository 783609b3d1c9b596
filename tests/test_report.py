"""Reports from the records of the real 12-run smoke suite (`python -m bench.run`): the headline, the details, the
formats, the Pareto plots and where the models go wrong; hand-made records where a test needs particular numbers."""
from __future__ import annotations

import copy
import re
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.measuring.confusion import top_confusions
from bench.report import Filters, NoRecordsError, build_parser, main as report_main, write_report
from bench.reporting.columns import label
from bench.reporting.headline import (HEADLINE_COLUMNS, HEADLINE_GROUP, headline_caption, headline_runs, headline_table,
                                      headline_view)
from bench.reporting.plots import confusion_figure, slug
from bench.reporting.render import render
from bench.reporting.tables import ACCURACY_KEYS, SPEED_KEYS, accuracy_table, gains_table, run_rows
from bench.reporting.tradeoffs import device_warning, tradeoff_table
from bench.results.schema import RunRecord
from data.datasets import CIFAR10_CLASSES
from helpers import SMOKE_CONFIGURATION, records_in, run_module
from models import model_names

DATASETS = ("mnist", "cifar10")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADLINE_LABELS = [label(name) for name in HEADLINE_COLUMNS]  # as users read them


@pytest.fixture(scope="module")
def report(smoke_suite, tmp_path_factory):
    """One report written from a copy of the smoke suite's records; the tests below only read it."""
    return write_report(smoke_suite.copy_results(tmp_path_factory.mktemp("report") / "results"))


def variant(record: RunRecord, name: str, **changes) -> RunRecord:
    """A copy of a real record as another run: record fields, configuration fields (`model=...`, `seed=1`, `data_source="real"`),
    and `config` and `metrics` entries changed."""
    twin = copy.deepcopy(record)
    twin.run_id = f"{record.run_id}-{name}"
    twin.config.update(changes.pop("config", {}))
    twin.metrics.update(changes.pop("metrics", {}))
    if "data_source" in changes:
        twin.config["synthetic"] = changes.pop("data_source") == "synthetic"
    twin.config.update({key: changes.pop(key) for key in ("model", "seed", "precision") if key in changes})
    return replace(twin, **changes)


@pytest.mark.slow
def test_runner_prints_summary_and_writes_report(smoke_suite) -> None:
    for dataset in DATASETS:
        assert f"### {dataset}, synthetic data, CPU" in smoke_suite.stdout
    assert SMOKE_CONFIGURATION in smoke_suite.stdout and "Full report:" in smoke_suite.stdout
    assert (smoke_suite.results / "REPORT.md").is_file()


def test_tables_have_expected_rows_and_columns(report) -> None:
    accuracy = report.tables["accuracy"]
    study_models = list(model_names())
    assert list(accuracy["model"]) == study_models * len(DATASETS)  # data source, dataset, then model order
    assert list(accuracy["dataset"]) == [dataset for dataset in DATASETS for _ in study_models]
    assert set(ACCURACY_KEYS + ["n", "test_acc", "test_acc_std", "study_acc", "diff_pp"]) <= set(accuracy.columns)
    assert (accuracy["n"] == 1).all() and accuracy["test_acc_std"].isna().all()  # one seed: no spread
    assert set(accuracy["recipe"]) == {"fast"} and set(accuracy["preset"]) == {"smoke"}
    # Synthetic data is labelled as such and never set against the study's numbers.
    assert set(accuracy["data_source"]) == {"synthetic"}
    assert accuracy[["study_acc", "diff_pp", "study_train_s"]].isna().all().all()
    text = report.report_path.read_text()
    assert "Synthetic data" in text
    assert "- `train img/s`: Training images per second in the timed window" in text  # the metric's own words

    speed = report.tables["speed"]
    assert set(SPEED_KEYS) <= set(speed.columns) and speed["device"].str.startswith("CPU").all()
    assert (speed["train_images_per_s"] > 0).all() and (speed["eval_images_per_s"] > 0).all()
    assert (speed["peak_mem_allocated_bytes"] > 100).all() and (speed["params_m"] > 5).all()  # MiB, not bytes
    assert (speed["world_size"] == 1).all() and (speed["batch_size"] == 16).all()

    gains = report.tables["gains"]  # one recipe (fast) for both twins: each improved model's gain is all architecture
    improved = [model for model in study_models if model.endswith("_improved")]
    assert sorted(gains["model"]) == sorted(improved * len(DATASETS))
    assert (gains["recipe_part_pp"] == 0).all() and (gains["arch_part_pp"] == gains["gain_pp"]).all()
    assert report.tables["failures"].empty and report.tables["speed_sweep"].empty and report.skipped == []
    assert "comparison" not in report.tables
    frames = report.tables
    assert set(report.csv_paths) == set(frames) == {"headline", "weakest_classes", "accuracy", "gains", "speed",
                                                    "speed_sweep", "failures", "tradeoffs", "scaling"}
    for name, path in report.csv_paths.items():
        assert path.parent == report.report_path.parent / "tables"
        written = pd.read_csv(path)  # headed with the labels users read
        assert list(written.columns) == [label(column) for column in frames[name].columns]
        assert len(written) == len(frames[name])
    # md is the default format: each shown table is a markdown file too, the headline one per group.
    assert {path.suffix for path in report.table_paths} == {".md"}
    device = slug(speed["device"].iloc[0])
    assert {path.name for path in report.table_paths if path.name.startswith("headline")} == {
        f"headline_{dataset}_synthetic_{device}_smoke.md" for dataset in DATASETS}


def test_headline_from_the_smoke_suite(report) -> None:
    headline = report.tables["headline"]
    groups = list(headline.groupby(HEADLINE_GROUP, sort=False))
    assert [keys[1] for keys, _ in groups] == list(DATASETS)  # mnist, then cifar10: the registry's order
    for (source, _, device, preset), rows in groups:
        assert (source, preset) == ("synthetic", "smoke") and device.startswith("CPU")
        assert list(rows["model"]) == list(model_names()) and (rows["n"] == 1).all() and (rows["configs"] == 1).all()
        assert headline_caption(rows) == SMOKE_CONFIGURATION
        view = headline_view(rows)
        assert list(view.columns) == HEADLINE_COLUMNS and len(view.columns) <= 12
        assert view[["study_acc", "diff_pp", "study_train_s", "speed_up"]].isna().all().all()  # synthetic: blank
        assert view["time_to_target_s"].isna().all()  # no target on synthetic data
        assert (view["test_acc"] == rows["test_acc"].to_numpy()).all() and (view["peak_mem_gib"] > 0.1).all()
        assert (view["infer_p50_ms"] > 0).all()  # the trained model's batch-1 latency
    text = report.report_path.read_text()
    sections = [text.index(title) for title in ("## Headline", "### mnist, synthetic data", SMOKE_CONFIGURATION,
                                                "## Where the models go wrong", "## Details", "### Test accuracy (%)")]
    assert sections == sorted(sections)  # the headline first, the per-configuration tables in Details
    first_table = text[text.index("\n|") + 1:].splitlines()[0]
    assert [cell.strip() for cell in first_table.strip("|").split("|")] == HEADLINE_LABELS
    summary = report.summary_markdown
    assert summary.startswith("### mnist, synthetic data, CPU") and summary.count(SMOKE_CONFIGURATION) == 2
    assert "### Test accuracy (%)" not in summary and summary.endswith(f"Full report: {report.report_path}")


def test_headline_takes_each_models_most_recent_configuration(smoke_suite) -> None:
    records = records_in(smoke_suite.results)
    real = {(r.model, r.dataset): r for r in records}
    resnet, vgg, inception = (real[(model, "mnist")] for model in ("resnet18", "vgg16", "inception_v1"))
    later = "2099-01-01T00:00:00+0000"
    added = [
        # resnet18: a bf16 configuration, run later with two seeds; one reached its target.
        *(variant(resnet, f"bf16-{seed}", seed=seed, precision="bf16", started_at=later,
                  config={"target_accuracy": 0.6},
                  metrics={"test_acc": acc, "target_accuracy": 0.6, "time_to_target_s": time})
          for seed, acc, time in ((0, 0.5, 12.0), (1, 0.7, None))),
        # vgg16: three epochs, three seeds, none reached the target.
        *(variant(vgg, f"3ep-{seed}", seed=seed, started_at=later, config={"epochs": 3, "target_accuracy": 0.9},
                  metrics={"target_accuracy": 0.9, "time_to_target_s": None}) for seed in range(3)),
        # inception_v1: the fp16 run is the later one although its local time reads earlier.
        variant(inception, "bf16", precision="bf16", started_at="2099-01-01T02:00:00+0500"),
        variant(inception, "fp16", precision="fp16", started_at=later, metrics={"test_acc": 0.25}),
        # Models the registry does not know (a plugin's): after the study's, alphabetically.
        variant(resnet, "zeta", model="zeta_net"), variant(resnet, "alpha", model="alpha_net"),
    ]
    table = headline_table(headline_runs(run_rows(records + added)))
    mnist = table[table["dataset"] == "mnist"].set_index("model", drop=False)
    assert list(mnist["model"]) == [*model_names(), "alpha_net", "zeta_net"]
    assert mnist.loc["resnet18", ["precision", "n", "configs"]].tolist() == ["bf16", 2, 2]
    assert mnist.loc["resnet18", "test_acc"] == pytest.approx(60.0)
    assert mnist.loc["vgg16", ["epochs", "n", "configs"]].tolist() == [3, 3, 2]
    assert mnist.loc["inception_v1", ["precision", "configs"]].tolist() == ["fp16", 3]
    assert mnist.loc["inception_v1", "test_acc"] == pytest.approx(25.0)
    to_target = headline_view(mnist).set_index("model")["time_to_target_s"]
    assert to_target["resnet18"] == "12.0 (1/2)" and to_target["vgg16"] == "not reached (0/3)"
    assert to_target.drop(["resnet18", "vgg16"]).isna().all()
    caption = headline_caption(mnist)
    assert caption.startswith("Configurations: ")
    assert "precision bf16, 64+21 synthetic images, target 60.00% (resnet18)" in caption
    assert "recipe fast, 3 epochs, batch 16" in caption and "precision fp16" in caption
    assert ("vgg16 has 2 configurations, resnet18 has 2 configurations, inception_v1 has 3 configurations here: "
            "each row is the configuration of the model's most recent run") in caption
    assert (table[table["dataset"] == "cifar10"]["configs"] == 1).all()  # other groups are untouched


def study_history(val_accs: list[float], seconds_per_row: float = 300.0) -> list[dict]:
    """History rows of a real run: one validation per `seconds_per_row` training seconds, at these accuracies."""
    return [{"epoch": epoch, "step": epoch * 100, "train_time_s": seconds_per_row, "elapsed_s": epoch * 400.0,
             "val_acc": acc} for epoch, acc in enumerate(val_accs, start=1)]


def test_real_data_rows_carry_the_study_numbers(smoke_suite) -> None:
    (resnet,) = [r for r in records_in(smoke_suite.results) if (r.model, r.dataset) == ("resnet18", "mnist")]
    # The study's 98.99 % first reached at the third validation: 900 training seconds, half the study's 1804.
    real = variant(resnet, "real", data_source="real", history=study_history([0.97, 0.985, 0.9899, 0.991]),
                   config={"target_accuracy": 0.9899},
                   metrics={"test_acc": 0.9900, "train_time_s": 1200.0, "target_accuracy": 0.9899,
                            "time_to_target_s": 900.0})
    table = headline_table(headline_runs(run_rows([real])))
    (row,) = table.to_dict("records")
    assert (row["study_acc"], row["study_train_s"]) == (98.99, 1804)  # docs/STUDY.md
    assert row["diff_pp"] == pytest.approx(0.01) and row["to_study_s"] == 900.0
    assert row["speed_up"] == pytest.approx(1804 / 900)  # to the study's accuracy, not over the whole run
    view = headline_view(table)
    assert view["time_to_target_s"].tolist() == ["900.0"] and view["speed_up"].tolist() == ["2.00"]
    assert "target" not in headline_caption(table)  # the study's accuracy is the default target: not named
    other = variant(real, "target", config={"target_accuracy": 0.95}, metrics={"target_accuracy": 0.95})
    assert "target 95.00%" in headline_caption(headline_table(headline_runs(run_rows([other]))))


def test_no_speed_up_for_a_run_that_missed_the_studys_accuracy(smoke_suite) -> None:
    """Two short epochs under the study's accuracy: fewer seconds than the study's, but no speed-up, as the run
    never got there; a lower target of its own, reached, does not make one either."""
    (resnet,) = [r for r in records_in(smoke_suite.results) if (r.model, r.dataset) == ("resnet18", "cifar10")]
    short = variant(resnet, "short", data_source="real", history=study_history([0.55, 0.61], seconds_per_row=80.0),
                    metrics={"test_acc": 0.61, "train_time_s": 160.0, "target_accuracy": 0.60,
                             "time_to_target_s": 160.0})
    (row,) = headline_table(headline_runs(run_rows([short]))).to_dict("records")
    assert row["study_train_s"] > 160 and np.isnan(row["speed_up"]) and row["study_reached"] == "0/1"
    view = headline_view(pd.DataFrame([row]))
    assert view["speed_up"].tolist() == ["not reached (0/1)"] and view["time_to_target_s"].tolist() == ["160.0"]
    assert "| not reached (0/1) |" in render(view, "md")


def test_the_trade_off_table_and_a_warning_for_a_shared_or_throttled_gpu(report, smoke_suite) -> None:
    tradeoffs = report.tables["tradeoffs"]  # one row per configuration: 6 models x 2 datasets, all eager on a CPU
    assert len(tradeoffs) == 12 and (tradeoffs["infer_p50_ms"] > 0).all() and (tradeoffs["infer_images_per_s"] > 0).all()
    assert (tradeoffs["cost_usd"] > 0).all() and (tradeoffs["price_per_hour_usd"] == 2.5).all()
    assert (tradeoffs["time_to_first_step_s"] > 0).all() and "compiled_infer_p50_ms" not in tradeoffs  # nothing compiled
    assert "### Inference, cold start, energy and cost" in report.report_path.read_text()
    assert device_warning(run_rows(records_in(smoke_suite.results))) is None  # a CPU flags nothing
    records = records_in(smoke_suite.results)
    flagged = [variant(r, "flag", metrics={"device_shared": r.model == "vgg16",
                                           "device_throttled": r.model == "resnet18"}) for r in records]
    warning = device_warning(run_rows(flagged))
    assert warning.startswith("**Warning:** measured on a throttling GPU during resnet18; on a GPU shared with "
                              "other processes during vgg16")
    table = tradeoff_table(run_rows(flagged)).set_index(["model", "dataset"])
    assert table.loc[("vgg16", "mnist"), "device_shared"] == "1/1" and table.loc[("resnet18", "cifar10"), "device_throttled"] == "1/1"
    assert (table["device_shared"] == "0/1").sum() == 10  # in how many runs, per configuration


def test_seeds_aggregate_to_mean_and_std(smoke_suite) -> None:
    """Two more seeds of one configuration, hand-made from its real record, aggregate to mean and sample std."""
    (record,) = [r for r in records_in(smoke_suite.results) if (r.model, r.dataset) == ("resnet18", "mnist")]
    values = [record.metrics["test_acc"], 0.4, 0.7]
    seeds = [variant(record, f"seed{seed}", seed=seed, metrics={"test_acc": value})
             for seed, value in enumerate(values[1:], start=1)]
    accuracy = accuracy_table(run_rows([record, *seeds])).set_index(["model", "dataset"])
    row = accuracy.loc[("resnet18", "mnist")]
    assert row["n"] == 3
    assert row["test_acc"] == pytest.approx(statistics.mean(values) * 100)
    assert row["test_acc_std"] == pytest.approx(statistics.stdev(values) * 100)


def test_plots_are_written_and_linked(report) -> None:
    results = report.report_path.parent
    names = {path.name for path in (results / "plots").glob("*.png")}
    device = slug(report.tables["headline"]["device"].iloc[0])
    for dataset in DATASETS:
        assert {f"accuracy_vs_time_{dataset}_synthetic.png", f"accuracy_vs_memory_{dataset}_synthetic.png",
                f"accuracy_vs_latency_{dataset}_synthetic.png", f"val_accuracy_{dataset}_synthetic.png", f"confusion_{dataset}_synthetic_{device}_smoke.png"} <= names
    assert names == {path.name for path in report.plot_paths}
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.report_path.read_text())
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
    for option in ("--results-dir", "--baseline"):  # a folder that is not there: the option, and what it expects
        with pytest.raises(SystemExit) as exit_info:
            report_main([*(["--results-dir", str(tmp_path)] if option == "--baseline" else []), option,
                         str(tmp_path / "missing")])
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert option in line and "missing is not a folder; expected a results folder" in line


def test_filters_select_records(smoke_suite, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = smoke_suite.copy_results(tmp_path / "results")
    mnist = write_report(results, Filters(device="cpu", dataset="mnist", preset="smoke")).tables["accuracy"]
    assert len(mnist) == 6 and set(mnist["dataset"]) == {"mnist"}
    with pytest.raises(NoRecordsError, match="match the filters"):
        write_report(results, Filters(dataset="fashion_mnist"))
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--since", "yesterday"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_gain_splits_into_recipe_and_architecture(report) -> None:
    """Gains from the smoke run's accuracy row, relabelled as the study's models and recipes (plus offsets)."""
    row = report.tables["accuracy"].iloc[[0]]
    vanilla = float(row["test_acc"].iloc[0])

    def table(*rows: tuple[str, str, float]) -> pd.DataFrame:
        return pd.concat([row.assign(model=model, recipe=recipe, **{"test_acc": vanilla + offset})
                          for model, recipe, offset in rows], ignore_index=True)

    # Ablation: the vanilla architecture also trained with the improved recipe.
    gains = gains_table(table(("resnet18", "paper-vanilla", 0.0), ("resnet18", "paper-improved", 2.0),
                              ("resnet18_improved", "paper-improved", 5.0)))
    assert len(gains) == 1
    ablation = gains.iloc[0]
    assert (ablation["model"], ablation["vanilla"]) == ("resnet18_improved", "resnet18")
    assert (ablation["vanilla_recipe"], ablation["recipe"]) == ("paper-vanilla", "paper-improved")
    assert ablation[["gain_pp", "recipe_part_pp", "arch_part_pp"]].tolist() == pytest.approx([5.0, 2.0, 3.0])
    # The study's pairing without an ablation: a total gain that cannot be split.
    paired = gains_table(table(("resnet18", "paper-vanilla", 0.0), ("resnet18_improved", "paper-improved", 4.0))).iloc[0]
    assert paired["gain_pp"] == pytest.approx(4.0) and pd.isna(paired["recipe_part_pp"]) and pd.isna(paired["arch_part_pp"])
    # One recipe for both: the whole gain is architecture.
    same = gains_table(table(("resnet18", "fast", 0.0), ("resnet18_improved", "fast", 1.5))).iloc[0]
    assert same[["gain_pp", "recipe_part_pp", "arch_part_pp"]].tolist() == pytest.approx([1.5, 0.0, 1.5])
    # No vanilla twin, no row.
    assert gains_table(table(("vgg16_improved", "fast", 1.0))).empty


def test_top_confusions_are_the_most_frequent_off_the_diagonal():
    matrix = [[5, 2, 0], [4, 1, 4], [0, 1, 9]]
    assert top_confusions(matrix) == [[1, 0, 4, 9], [1, 2, 4, 9], [0, 1, 2, 7], [2, 1, 1, 10]]
    assert top_confusions(matrix, count=1) == [[1, 0, 4, 9]] and top_confusions(np.eye(3, dtype=int)) == []


def test_weakest_classes_and_confusion_matrices(report, smoke_suite) -> None:
    records = {(r.model, r.dataset): r for r in records_in(smoke_suite.results)}
    weakest = report.tables["weakest_classes"]
    assert list(weakest["model"]) == list(model_names()) * len(DATASETS)
    for row in weakest.itertuples(index=False):
        record = records[(row.model, row.dataset)]
        seen = [i for i, counts in enumerate(record.test_confusion) if sum(counts) > 0]
        order = sorted(seen, key=lambda i: record.test_per_class_acc[i])[:3]
        assert [row[5], row[7], row[9]] == [record.class_names[i] for i in order]
        assert [row[6], row[8], row[10]] == pytest.approx([record.test_per_class_acc[i] * 100 for i in order])
        names = record.class_names  # the three most frequent confusions, as the record's matrix has them
        assert [text for text in row[11:14] if isinstance(text, str)] == [
            f"{names[true]} -> {names[predicted]} ({count}/{of})"
            for true, predicted, count, of in top_confusions(record.test_confusion)[:3]]
    chosen = headline_runs(run_rows(list(records.values())))
    for keys, group in chosen.groupby(HEADLINE_GROUP, sort=False):
        figure = confusion_figure(keys, group)
        panels = [axes for axes in figure.axes if axes.images and axes.get_title()]
        assert [axes.get_title() for axes in panels] == list(model_names())
        for axes in panels:
            counts = np.array(records[(axes.get_title(), keys[1])].test_confusion, dtype=float)
            expected = counts * 100 / counts.sum(axis=1, keepdims=True)
            assert np.allclose(axes.images[0].get_array().filled(np.nan), expected, equal_nan=True)
        figure.draw_without_rendering()
        names = list(CIFAR10_CLASSES) if keys[1] == "cifar10" else list("0123456789")
        assert [label.get_text() for label in panels[-1].get_xticklabels()] == names  # bottom row: class names
        assert [label.get_text() for label in panels[0].get_yticklabels()] == names  # left column
    assert "## Where the models go wrong" in report.report_path.read_text()
