"""The suite's report: `python -m bench.report` (and `write_report`, which bench/run.py calls last).

Reads the run and sweep records under one or more results folders (merged), and writes REPORT.md (its layout and prose:
templates/report.md.j2), the tables (CSV always, as data, and in --format) and the PNG plots.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Sequence

import jinja2
import pandas as pd

from bench.reporting.columns import glossary, label
from bench.reporting.compare import (NOISE_FLOOR_PCT, NOISE_SIGMAS, Merged, comparison_table, comparison_view, load_merged,
                                     regressions)
from bench.reporting.headline import (HEADLINE_GROUP, group_title, headline_caption, headline_runs, headline_table,
                                      headline_view, weakest_classes)
from bench.reporting.plots import group_slug, plot_confusion, plot_curves, plot_pareto, plot_throughput
from bench.reporting.render import EXTENSIONS, markdown_table, render, write_table
from bench.reporting.scaling import (glossary as scaling_glossary, plot_scaling, scaling_table,
                                     sections as scaling_sections)
from bench.reporting.tables import (CONFIG_KEYS, accuracy_table, failures_table, gains_table, run_rows, speed_table,
                                    sweep_table)
from bench.reporting.tradeoffs import device_warning, tradeoff_table
from bench.results.records import runs_dir
from bench.results.schema import RunRecord, SweepRecord
from bench.suite.options import results_folder
from bench.suite.recipes import PRESETS
from common.cli import OneLineParser, add_plugin_option, existing_folder, load_plugins
from common.files import DiskFull, atomic_write
from data.datasets import dataset_names

PROG = "python -m bench.report"


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

    def _common(self, record: RunRecord | SweepRecord, stamp: str | None) -> bool:
        if self.device is not None and self.device.lower() not in str(record.device or "").lower():
            return False
        if self.dataset is not None and record.dataset != self.dataset:
            return False
        return self.since is None or str(stamp or "")[:10] >= self.since.isoformat()

    def keep_run(self, record: RunRecord) -> bool:
        return self._common(record, record.started_at) and (self.preset is None or record.preset == self.preset)

    def keep_sweep(self, record: SweepRecord) -> bool:
        return self.preset is None and self._common(record, record.measured_at)


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote and the tables behind it."""

    report_path: Path
    tables: dict[str, pd.DataFrame]  # headline, weakest_classes, accuracy, gains, speed, speed_sweep, tradeoffs,
    # failures, and comparison with --baseline; columns named as in the code
    csv_paths: dict[str, Path]  # table name -> its CSV (the data)
    table_paths: list[Path]  # the tables rendered in the chosen format (none extra for csv)
    plot_paths: list[Path]
    regressions: list[str]  # flagged configurations, one phrase each
    summary_markdown: str  # what the command prints (in the chosen format, markdown by default)
    skipped: list[tuple[Path, str]]


# ----- writing -------------------------------------------------------------------------------------------------

def relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def skipped_lines(skipped: list[tuple[Path, str]], base: Path | None = None) -> list[str]:
    return [f"- `{relative(path, base) if base else path}`: {reason}" for path, reason in skipped]


def folders_text(folders: list[Path]) -> str:
    return ", ".join(str(folder) for folder in folders)


def no_records_message(merged: Merged, filters: Filters) -> str:
    where, readable = folders_text(merged.folders), len(merged.runs) + len(merged.sweeps)
    if readable:
        return f"no records in {where} match the filters ({filters.describe()}); {readable} record(s) there"
    if merged.skipped:
        path, reason = merged.skipped[0]
        return f"no readable records in {where}: {len(merged.skipped)} unreadable, e.g. {path}: {reason}"
    runs = ", ".join(str(runs_dir(folder)) for folder in merged.folders)
    return f"no run records in {runs} (run `python -m bench.run` first)"


def sections(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """A headline-shaped table split into its groups, in the table's order."""
    return list(table.groupby(HEADLINE_GROUP, dropna=False, sort=False))


def heading(title: str, fmt: str) -> str:
    return f"### {title}" if fmt == "md" else title


def headline_lines(headline: pd.DataFrame, fmt: str) -> list[str]:
    """Each headline table in `fmt`, under its title and caption."""
    lines = []
    for keys, rows in sections(headline):
        lines += [heading(group_title(keys), fmt), "", headline_caption(rows), "", render(headline_view(rows), fmt), ""]
    return lines or ["No finished runs: no headline.", ""]


def regression_line(flagged: list[str]) -> str:
    return (f"Regression (throughput fell beyond the noise): {'; '.join(flagged)}." if flagged
            else "No throughput regression beyond the noise.")


TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                               keep_trailing_newline=True, autoescape=False)


def report_markdown(out: Path, merged: Merged, runs: pd.DataFrame, sweeps: int, filters: Filters,
                    tables: dict[str, pd.DataFrame], csv_paths: dict[str, Path], plots: dict[str, list[Path]],
                    confusion: dict[tuple, Path], baseline: Merged | None, flagged: list[str]) -> str:
    """REPORT.md: the tables rendered here, laid out and introduced by templates/report.md.j2."""
    def image(path: Path) -> dict:
        return {"stem": path.stem, "link": relative(path, out)}

    def csv_link(name: str) -> str:
        return f"CSV: [{relative(csv_paths[name], out)}]({relative(csv_paths[name], out)})"

    shown = {name: table for name, table in tables.items() if name not in ("headline", "comparison")}
    if "comparison" in tables:
        shown["comparison"] = comparison_view(tables["comparison"])
    if not tables["headline"].empty:
        shown["headline"] = headline_view(tables["headline"])
    behind = dict(sections(headline_runs(runs)))  # each headline table's runs: their device flags
    return TEMPLATES.get_template("report.md.j2").render(
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), run_count=len(runs), sweep_count=sweeps,
        folders=folders_text(merged.folders), dropped=merged.dropped, filters=filters.describe(),
        synthetic=bool((runs["data_source"] == "synthetic").any()),
        headline=[{"title": group_title(keys), "caption": headline_caption(rows), "table": markdown_table(
            headline_view(rows)), "flags": device_warning(behind[keys])} for keys, rows in sections(tables["headline"])],
        comparison={"baseline": folders_text(baseline.folders), "table": markdown_table(shown["comparison"]),
                    "verdict": regression_line(flagged)} if baseline is not None else None,
        config_keys=", ".join(label(key) for key in CONFIG_KEYS), noise_floor=f"{NOISE_FLOOR_PCT:g}", noise_sigmas=f"{NOISE_SIGMAS:g}",
        weakest=[{"title": group_title(keys), "table": markdown_table(rows.drop(columns=HEADLINE_GROUP)),
                  "confusion": image(confusion[keys]) if keys in confusion else None}
                 for keys, rows in sections(tables["weakest_classes"])],
        plots=[image(path) for kind in ("pareto", "curves", "throughput") for path in plots[kind]],
        tables={name: markdown_table(table) for name, table in tables.items()}, has_sweeps=not tables["speed_sweep"].empty,
        glossary={name: "\n".join(glossary(table.columns)) for name, table in shown.items()},
        csv={name: csv_link(name) for name in csv_paths}, skipped=skipped_lines(merged.skipped, out),
        scaling=scaling_sections(tables["scaling"]), scaling_glossary=scaling_glossary(),
        scaling_plots=[image(path) for path in plots["scaling"]]).rstrip("\n") + "\n"


def summary_text(report_path: Path, tables: dict[str, pd.DataFrame], merged: Merged, flagged: list[str],
                 fmt: str) -> str:
    """What the command (and every suite) prints: the headline tables in `fmt`, the comparison, and what went
    wrong."""
    lines = headline_lines(tables["headline"], fmt)
    if "comparison" in tables:
        lines += [heading("Against the baseline", fmt), "", render(comparison_view(tables["comparison"]), fmt), "",
                  regression_line(flagged), ""]
    failures = tables["failures"]
    if not failures.empty:
        lines.append(f"{len(failures)} run(s) did not finish ({', '.join(sorted(set(failures['status'])))}).")
    if merged.dropped:
        lines.append(f"Dropped {merged.dropped} duplicate record(s) (the same run on the same device kind).")
    if merged.skipped:
        lines += [f"Skipped {len(merged.skipped)} unreadable record(s):", *skipped_lines(merged.skipped)]
    lines.append(f"Full report: {report_path}")
    return "\n".join(lines)


def write_tables(out: Path, tables: dict[str, pd.DataFrame], fmt: str) -> tuple[dict[str, Path], list[Path]]:
    """Every table as CSV (the data), and, unless fmt is csv, each table as shown in `fmt`: the headline and the
    weakest classes one file per group, the others one file each."""
    folder = out / "tables"
    csv_paths = {name: write_table(folder / name, table, "csv") for name, table in tables.items()}
    if fmt == "csv":
        return csv_paths, []
    shown = {name: table for name, table in tables.items() if name not in ("headline", "weakest_classes", "comparison")}
    shown |= {f"headline_{group_slug(keys)}": headline_view(rows) for keys, rows in sections(tables["headline"])}
    shown |= {f"weakest_classes_{group_slug(keys)}": rows.drop(columns=HEADLINE_GROUP)
              for keys, rows in sections(tables["weakest_classes"])}
    if "comparison" in tables:
        shown["comparison"] = comparison_view(tables["comparison"])
    return csv_paths, [write_table(folder / name, table, fmt) for name, table in shown.items()]


def write_report(results: Path | Sequence[Path], filters: Filters = Filters(), out: Path | None = None,
                 baseline: Sequence[Path] | None = None, fmt: str = "md") -> Report:
    """Read the records under `results` (one folder or several, merged), write REPORT.md, tables/ and plots/ to
    `out` (default: the first folder), compare with the `baseline` folders if given, and return it all."""
    folders = [Path(results)] if isinstance(results, (str, Path)) else [Path(folder) for folder in results]
    out = Path(out) if out is not None else folders[0]
    merged = load_merged(folders)
    kept_runs = [record for record in merged.runs if filters.keep_run(record)]
    kept_sweeps = [record for record in merged.sweeps if filters.keep_sweep(record)]
    if not kept_runs and not kept_sweeps:
        raise NoRecordsError(no_records_message(merged, filters))
    before = load_merged(baseline) if baseline else None
    if before is not None and not before.runs:
        raise NoRecordsError(f"--baseline {folders_text(before.folders)}: no run records there; expected the results "
                             "folder of an earlier suite")

    runs = run_rows(kept_runs)
    chosen = headline_runs(runs)
    accuracy = accuracy_table(runs)
    tables = {"headline": headline_table(chosen), "weakest_classes": weakest_classes(chosen), "accuracy": accuracy,
              "gains": gains_table(accuracy), "speed": speed_table(runs), "speed_sweep": sweep_table(kept_sweeps),
              "tradeoffs": tradeoff_table(runs), "failures": failures_table(runs), "scaling": scaling_table(kept_runs)}
    if before is not None:
        tables["comparison"] = comparison_table(runs, run_rows(before.runs))
    flagged = regressions(tables["comparison"]) if before is not None else []
    csv_paths, table_paths = write_tables(out, tables, fmt)
    plots_dir = out / "plots"
    confusion = plot_confusion(chosen, plots_dir)
    plots = {"pareto": plot_pareto(runs, plots_dir), "curves": plot_curves(runs, plots_dir),
             "throughput": plot_throughput(tables["speed_sweep"], plots_dir),
             "scaling": plot_scaling(tables["scaling"], plots_dir)}
    text = report_markdown(out, merged, runs, len(kept_sweeps), filters, tables, csv_paths, plots, confusion, before,
                           flagged)
    report_path = atomic_write(out / "REPORT.md", lambda tmp: tmp.write_text(text))
    return Report(
        report_path=report_path, tables=tables, csv_paths=csv_paths, table_paths=table_paths,
        plot_paths=[*plots["pareto"], *confusion.values(), *plots["curves"], *plots["throughput"],
                    *plots["scaling"]],
        regressions=flagged, summary_markdown=summary_text(report_path, tables, merged, flagged, fmt),
        skipped=merged.skipped,
    )


# ----- command line --------------------------------------------------------------------------------------------

def iso_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


RESULTS_FOLDER = existing_folder("a results folder of bench/run.py (holding runs/ or speed/)")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Tables and plots from the run records of bench/run.py "
                           "(and the speed sweeps of bench/speed.py): REPORT.md, tables/, plots/*.png.")
    parser.add_argument("--results-dir", type=RESULTS_FOLDER, nargs="+", default=[Path("results")], metavar="DIR",
                        help="results folder(s) to report on, merged: the same run on the same device kind counts "
                        "once (default: results/)")
    parser.add_argument("--out", type=results_folder, metavar="DIR",
                        help="where REPORT.md, tables/ and plots/ go (default: the first --results-dir)")
    parser.add_argument("--baseline", type=RESULTS_FOLDER, nargs="+", metavar="DIR",
                        help="results folder(s) to compare with: per configuration present on both sides, the "
                        "changes in accuracy, img/s, peak memory and time to target, and a flag where throughput "
                        "fell beyond the noise (the filters below pick the records reported; the baseline is matched "
                        "against them)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when the comparison with --baseline flags a throughput regression")
    parser.add_argument("--format", choices=tuple(EXTENSIONS), default="md",
                        help="format of the printed summary and of the table files (default: md); CSV files are "
                        "always written too")
    parser.add_argument("--device", help="only records whose device name contains this (case-insensitive)")
    parser.add_argument("--dataset", choices=dataset_names(), help="only this dataset")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="only runs of this preset (leaves out speed sweeps)")
    parser.add_argument("--since", type=iso_day, help="only records started on or after this day (YYYY-MM-DD)")
    add_plugin_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    load_plugins(argv, PROG)  # a plugin's dataset is a valid --dataset, its models keep their registry order
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fail_on_regression and not args.baseline:
        parser.error("argument --fail-on-regression: expected --baseline DIR too (the results to compare with)")
    filters = Filters(device=args.device, dataset=args.dataset, preset=args.preset, since=args.since)
    try:
        report = write_report(args.results_dir, filters, out=args.out, baseline=args.baseline, fmt=args.format)
    except (NoRecordsError, DiskFull) as error:  # DiskFull: the records are safe, the report is not written
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(report.summary_markdown)
    if args.fail_on_regression and report.regressions:
        print(f"{PROG}: regression: train img/s fell beyond the noise in {len(report.regressions)} configuration(s): "
              + "; ".join(report.regressions), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
