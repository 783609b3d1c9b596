"""Reports from the records of a real smoke suite (`python -m bench.run`), and the Pareto front."""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from bench.plots import pareto_front
from bench.report import Filters, NoRecordsError, build_parser, write_report
from bench.tables import ACCURACY_KEYS, SPEED_KEYS, gains_table

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet18",)  # one model keeps the suite's cost down; gains are tested below from its numbers
SEEDS = (0, 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class SmokeSuite:
    results: Path
    stdout: str


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeSuite:
    """Two seeds of one epoch each on the synthetic MNIST stand-in, through the real runner."""
    results, cache = tmp_path_factory.mktemp("smoke-results"), tmp_path_factory.mktemp("smoke-cache")
    command = [sys.executable, "-m", "bench.run", "--preset", "smoke", "--models", *MODELS, "--datasets", "mnist",
               "--seeds", *map(str, SEEDS), "--epochs", "1", "--results-dir", str(results), "--cache-dir", str(cache)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"smoke suite failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return SmokeSuite(results, done.stdout)


def run_report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.report", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_runner_prints_summary_and_writes_report(smoke: SmokeSuite) -> None:
    assert "### Test accuracy (%)" in smoke.stdout and "### Training speed" in smoke.stdout
    assert (smoke.results / "REPORT.md").is_file()


def test_tables_have_expected_rows_and_columns(smoke: SmokeSuite) -> None:
    report = write_report(smoke.results)
    accuracy = report.accuracy
    assert list(accuracy["model"]) == list(MODELS)
    assert set(ACCURACY_KEYS + ["n", "test acc %", "test acc % std", "study %", "diff pp"]) <= set(accuracy.columns)
    assert (accuracy["n"] == len(SEEDS)).all()
    assert set(accuracy["recipe"]) == {"fast"} and set(accuracy["preset"]) == {"smoke"}
    # Synthetic data is labelled as such and never set against the study's numbers.
    assert set(accuracy["data_source"]) == {"synthetic"}
    assert accuracy[["study %", "diff pp", "study train s"]].isna().all().all()
    assert "Synthetic data" in report.report_path.read_text()

    speed = report.speed
    assert list(speed["model"]) == list(MODELS)
    assert set(SPEED_KEYS) <= set(speed.columns) and speed["device"].str.startswith("CPU").all()
    assert (speed["train img/s"] > 0).all() and (speed["eval img/s"] > 0).all()
    assert (speed["peak alloc MiB"] > 0).all() and (speed["params M"] > 10).all()
    assert (speed["world size"] == 1).all() and (speed["batch"] == 32).all()

    assert report.gains.empty  # no improved model ran
    assert report.failures.empty and report.sweep.empty and report.skipped == []
    frames = {"accuracy": accuracy, "gains": report.gains, "speed": speed, "speed_sweep": report.sweep,
              "failures": report.failures}
    assert set(report.csv_paths) == set(frames)
    for name, path in report.csv_paths.items():
        assert path.parent == smoke.results / "tables"
        written = pd.read_csv(path)
        assert list(written.columns) == list(frames[name].columns) and len(written) == len(frames[name])
    assert report.summary_markdown.startswith("### Test accuracy (%)") and "### Training speed" in report.summary_markdown


def test_seeds_aggregate_to_mean_and_std(smoke: SmokeSuite) -> None:
    records = [json.loads(path.read_text()) for path in sorted((smoke.results / "runs").glob("*.json"))]
    assert len(records) == len(MODELS) * len(SEEDS)
    accuracy = write_report(smoke.results).accuracy.set_index("model")
    for model in MODELS:
        values = [record["metrics"]["test_acc"] * 100 for record in records if record["model"] == model]
        assert accuracy.loc[model, "test acc %"] == pytest.approx(statistics.mean(values))
        assert accuracy.loc[model, "test acc % std"] == pytest.approx(statistics.stdev(values))


def test_plots_are_written_and_linked(smoke: SmokeSuite) -> None:
    report = write_report(smoke.results)
    names = {path.name for path in report.plot_paths}
    assert {"accuracy_vs_time_mnist_synthetic.png", "val_accuracy_mnist_synthetic.png"} <= names
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.report_path.read_text())
    assert sorted(links) == sorted(path.relative_to(smoke.results).as_posix() for path in report.plot_paths)
    for link in links:
        data = (smoke.results / link).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(smoke.results.rglob("*.tmp"))


def test_corrupt_record_is_skipped_and_named(smoke: SmokeSuite, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(smoke.results / "runs", results / "runs")
    original = sorted((results / "runs").glob("*.json"))[0]
    corrupt = results / "runs" / f"corrupt-{original.name}"
    corrupt.write_bytes(original.read_bytes()[:40] + b"\x00garbage")
    fieldless = results / "runs" / "fieldless.json"
    fieldless.write_text('{"status": "finished"}')
    done = run_report_cli("--results-dir", str(results))
    assert done.returncode == 0, done.stderr
    report_text = (results / "REPORT.md").read_text()
    for path, reason in ((corrupt, "not valid JSON"), (fieldless, "missing fields")):
        assert f"{path}: {reason}" in done.stdout.replace("`", "")
        assert f"runs/{path.name}`: {reason}" in report_text
    accuracy = pd.read_csv(results / "tables" / "accuracy.csv")
    assert list(accuracy["model"]) == list(MODELS) and (accuracy["n"] == len(SEEDS)).all()


def test_empty_folder_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    done = run_report_cli("--results-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "no run records" in done.stderr and str(tmp_path) in done.stderr
    assert not (tmp_path / "REPORT.md").exists()


def test_filters_select_records(smoke: SmokeSuite, capsys: pytest.CaptureFixture) -> None:
    assert len(write_report(smoke.results, Filters(device="cpu", dataset="mnist", preset="smoke")).accuracy) == 1
    with pytest.raises(NoRecordsError, match="match the filters"):
        write_report(smoke.results, Filters(dataset="cifar10"))
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--since", "yesterday"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    write_report(smoke.results)  # leave the unfiltered report in place for the other tests


def test_gain_splits_into_recipe_and_architecture(smoke: SmokeSuite) -> None:
    """Gains from the smoke run's accuracy row, relabelled as the study's models and recipes (plus offsets)."""
    row = write_report(smoke.results).accuracy.iloc[[0]]
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
