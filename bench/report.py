"""The suite's reports: `python -m bench.report` (and `write_report`, which bench/run.py calls last).

Reads every run record (and speed-sweep record, if any) under a results folder and writes REPORT.md,
one CSV per table and PNG plots next to it. Tables are built with pandas and rendered by tabulate.
Rows are grouped by everything that changes a result (data source, preset, recipe, precision, device,
...) so that settings are never silently merged, and synthetic-data runs carry their label and no
study column: they test the harness, not the study's claims. Accuracies are shown as percentages.
Every file is written under a temp name and renamed into place.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench import metrics
from bench.config import PRESETS
from bench.plots import plot_accuracy_vs_time, plot_curves, plot_throughput
from bench.records import load_records, load_sweeps, runs_dir
from bench.tables import (DERIVED, accuracy_table, failures_table, gains_table, run_rows, speed_table,
                          sweep_table)
from data.cli import OneLineParser
from data.datasets import dataset_names
from data.files import atomic_write

PROG = "python -m bench.report"
FORMATS = {**metrics.formats(), **{column: fmt for column, (fmt, _) in DERIVED.items()}}


class NoRecordsError(Exception):
    """Nothing to report on; the message is one line for the user."""


@dataclass(frozen=True)
class Filters:
    """Which records a report covers. A filter on a field drops records that lack that field."""

    device: str | None = None  # case-insensitive substring of the device name
    dataset: str | None = None
    preset: str | None = None  # run records only (speed sweeps have no preset)
    since: date | None = None  # started (runs) / measured (sweeps) on or after this day

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in vars(self).items() if value is not None]
        return ", ".join(parts) if parts else "none"

    def _common(self, record: dict, stamp_key: str) -> bool:
        if self.device is not None and self.device.lower() not in str(record.get("device") or "").lower():
            return False
        if self.dataset is not None and record.get("dataset") != self.dataset:
            return False
        return self.since is None or str(record.get(stamp_key) or "")[:10] >= self.since.isoformat()

    def keep_run(self, record: dict) -> bool:
        return self._common(record, "started_at") and (self.preset is None or record.get("preset") == self.preset)

    def keep_sweep(self, record: dict) -> bool:
        return self.preset is None and self._common(record, "measured_at")


@dataclass
class Report:
    """What `write_report` wrote and the tables behind it."""

    report_path: Path
    csv_paths: dict[str, Path]
    plot_paths: list[Path]
    accuracy: pd.DataFrame
    gains: pd.DataFrame
    speed: pd.DataFrame
    failures: pd.DataFrame
    sweep: pd.DataFrame
    summary_markdown: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [self.report_path, *self.csv_paths.values(), *self.plot_paths]


# ----- writing -------------------------------------------------------------------------------------------------

def markdown_table(frame: pd.DataFrame) -> str:
    """tabulate's pipe table with per-column number formats; missing values stay blank."""
    if frame.empty:
        return "_(none)_"
    shown = frame.map(lambda value: value.replace("|", "\\|") if isinstance(value, str) else value)
    shown = shown.astype(object).where(frame.notna(), None)
    return shown.to_markdown(index=False, floatfmt=[FORMATS.get(column) or "g" for column in frame.columns],
                             missingval="")


def relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def skipped_lines(skipped: list[tuple[Path, str]], base: Path | None = None) -> list[str]:
    return [f"- `{relative(path, base) if base else path}`: {reason}" for path, reason in skipped]


def no_records_message(results_dir: Path, filters: Filters, readable: int, skipped: list[tuple[Path, str]]) -> str:
    if readable:
        return f"no records in {results_dir} match the filters ({filters.describe()}); {readable} record(s) there"
    if skipped:
        path, reason = skipped[0]
        return f"no readable records in {results_dir}: {len(skipped)} unreadable, e.g. {path}: {reason}"
    return f"no run records in {runs_dir(results_dir)} (run `python -m bench.run` first)"


INTRODUCTIONS = {
    "accuracy": "Test accuracy per configuration, over seeds, beside the study's where it has one (real data only).",
    "gains": "Gain of each improved model over its vanilla twin (pp). The baseline is the twin under paper-vanilla "
             "when that was run, else under the improved model's recipe (then the gain is all architecture). "
             "With an ablation run (the twin trained with the improved recipe) the gain splits into "
             "`recipe part` + `arch part`.",
    "speed": "Speed, cost and time to target per configuration (device first: hardware never mixes), over seeds.",
    "speed_sweep": "Points from `python -m bench.speed` (median of timed windows; `input` says whether batches came "
                   "from device-resident tensors or the FFCV loader).",
    "failures": "Runs that diverged, ran out of memory or failed; the first line of each error.",
}


def explanation(name: str, table: pd.DataFrame) -> list[str]:
    """A table's introduction and a glossary of its measured and derived columns."""
    derived = [f"- `{column}`: {DERIVED[column][1]}" for column in table.columns if column in DERIVED]
    return [INTRODUCTIONS[name], "", *metrics.glossary(table.columns), *derived]


TITLES = {
    "accuracy": "Test accuracy (%)", "gains": "Vanilla vs improved", "speed": "Training speed and cost",
    "speed_sweep": "Speed sweeps", "failures": "Failed, diverged and out-of-memory runs",
}


def report_markdown(results_dir: Path, tables: dict[str, pd.DataFrame], csv_paths: dict[str, Path],
                    plot_paths: list[Path], runs: pd.DataFrame, sweeps: int, filters: Filters,
                    skipped: list[tuple[Path, str]]) -> str:
    lines = [
        "# deepnets-bench report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from {len(runs)} run record(s) under `runs/` and "
        f"{sweeps} speed-sweep record(s) under `speed/`. Filters: {filters.describe()}.", "",
    ]
    if (runs["data_source"] == "synthetic").any():
        lines += ["> **Synthetic data.** Rows with `data_source` = synthetic come from the generated stand-in "
                  "datasets: they check the harness and say nothing about the study, so they carry no study "
                  "numbers.", ""]
    for name, table in tables.items():
        if name == "speed_sweep" and table.empty:
            continue
        lines += [f"## {TITLES[name]}", "", *explanation(name, table), "", markdown_table(table), "",
                  f"CSV: [{relative(csv_paths[name], results_dir)}]({relative(csv_paths[name], results_dir)})", ""]
    lines += ["## Plots", ""]
    lines += [f"![{path.stem}]({relative(path, results_dir)})" for path in plot_paths] or ["_(none)_"]
    if skipped:
        lines += ["", "## Skipped records", "", "These files could not be read and are left out:", "",
                  *skipped_lines(skipped, results_dir)]
    return "\n".join(lines) + "\n"


def summary_markdown(report_path: Path, accuracy: pd.DataFrame, speed: pd.DataFrame, failures: pd.DataFrame,
                     skipped: list[tuple[Path, str]]) -> str:
    lines = ["### Test accuracy (%)", "", markdown_table(accuracy), "", "### Training speed", "",
             markdown_table(speed), ""]
    if not failures.empty:
        lines.append(f"{len(failures)} run(s) did not finish ({', '.join(sorted(set(failures['status'])))}).")
    if skipped:
        lines += [f"Skipped {len(skipped)} unreadable record(s):", *skipped_lines(skipped)]
    lines.append(f"Full report: {report_path}")
    return "\n".join(lines)


def write_report(results_dir: Path, filters: Filters = Filters()) -> Report:
    """Read the records under results_dir, write REPORT.md, tables/*.csv and plots/*.png, return them."""
    results_dir = Path(results_dir)
    records, bad_runs = load_records(results_dir)
    sweeps, bad_sweeps = load_sweeps(results_dir)
    skipped = bad_runs + bad_sweeps
    kept_runs = [record for record in records if filters.keep_run(record)]
    kept_sweeps = [record for record in sweeps if filters.keep_sweep(record)]
    if not kept_runs and not kept_sweeps:
        raise NoRecordsError(no_records_message(results_dir, filters, len(records) + len(sweeps), skipped))

    runs = run_rows(kept_runs)
    accuracy = accuracy_table(runs)
    tables = {"accuracy": accuracy, "gains": gains_table(accuracy), "speed": speed_table(runs),
              "speed_sweep": sweep_table(kept_sweeps), "failures": failures_table(runs)}
    csv_paths = {name: atomic_write(results_dir / "tables" / f"{name}.csv",
                                    lambda tmp, table=table: table.to_csv(tmp, index=False))
                 for name, table in tables.items()}
    plots_dir = results_dir / "plots"
    plot_paths = [*plot_accuracy_vs_time(runs, plots_dir), *plot_curves(runs, plots_dir),
                  *plot_throughput(tables["speed_sweep"], plots_dir)]
    text = report_markdown(results_dir, tables, csv_paths, plot_paths, runs, len(kept_sweeps), filters, skipped)
    report_path = atomic_write(results_dir / "REPORT.md", lambda tmp: tmp.write_text(text))
    return Report(
        report_path=report_path, csv_paths=csv_paths, plot_paths=plot_paths, accuracy=accuracy,
        gains=tables["gains"], speed=tables["speed"], failures=tables["failures"], sweep=tables["speed_sweep"],
        summary_markdown=summary_markdown(report_path, accuracy, tables["speed"], tables["failures"], skipped),
        skipped=skipped,
    )


# ----- command line --------------------------------------------------------------------------------------------

def iso_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Tables and plots from the run records of bench/run.py "
                           "(and the speed sweeps of bench/speed.py): REPORT.md, tables/*.csv, plots/*.png.")
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="the suite's results (default: results/)")
    parser.add_argument("--device", help="only records whose device name contains this (case-insensitive)")
    parser.add_argument("--dataset", choices=dataset_names(), help="only this dataset")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="only runs of this preset (leaves out speed sweeps)")
    parser.add_argument("--since", type=iso_day, help="only records started on or after this day (YYYY-MM-DD)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    filters = Filters(device=args.device, dataset=args.dataset, preset=args.preset, since=args.since)
    try:
        report = write_report(args.results_dir, filters)
    except NoRecordsError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(report.summary_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
