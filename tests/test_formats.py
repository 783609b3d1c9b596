"""The report's formats: markdown, CSV, LaTeX and HTML tables that parse, headed with the labels users read, and
--format shaping the printed summary and the table files (the smoke suite's real records)."""
from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.report import main as report_main
from bench.reporting.columns import label
from bench.reporting.headline import HEADLINE_COLUMNS, headline_runs, headline_table, headline_view
from bench.reporting.render import render
from bench.reporting.tables import run_rows
from helpers import SMOKE_CONFIGURATION, records_in
from models import model_names

HEADLINE_LABELS = [label(name) for name in HEADLINE_COLUMNS]  # as users read them


class TableCells(HTMLParser):
    """The header and body cells of the HTML tables in a text, as lists of rows."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tables = 0
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td"):
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None


def html_cells(text: str) -> TableCells:
    parser = TableCells()
    parser.feed(text)
    return parser


def test_every_format_parses(smoke_suite) -> None:
    headline = headline_table(headline_runs(run_rows(records_in(smoke_suite.results))))
    rows = headline[headline["dataset"] == "mnist"]
    view = headline_view(rows)
    data = pd.read_csv(io.StringIO(render(view, "csv")))
    assert list(data.columns) == HEADLINE_LABELS and list(data["model"]) == list(model_names())
    assert data["test acc %"].to_numpy() == pytest.approx(rows["test_acc"].to_numpy())  # full precision
    latex = render(view, "latex")
    assert "\\begin{tabular}" in latex and "test acc \\%" in latex and "inception\\_v1\\_improved" in latex
    assert "nan" not in latex.lower()  # missing values stay blank
    cells = html_cells(render(view, "html"))
    assert cells.tables == 1 and cells.rows[0] == HEADLINE_LABELS and len(cells.rows) == 1 + len(rows)
    assert [row[0] for row in cells.rows[1:]] == list(model_names())
    assert cells.rows[1][2] == format(rows["test_acc"].iloc[0], ".2f") and cells.rows[1][3] == ""  # blank study %
    markdown = render(view, "md").splitlines()
    assert len(markdown) == 2 + len(rows) and markdown[0].startswith("| model")


def test_format_option_shapes_the_summary_and_the_table_files(smoke_suite, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "html"
    assert report_main(["--results-dir", str(smoke_suite.results), "--out", str(out), "--format", "html",
                        "--dataset", "cifar10"]) == 0
    printed = capsys.readouterr().out
    cells = html_cells(printed)
    assert cells.tables == 1 and cells.rows[0] == HEADLINE_LABELS and SMOKE_CONFIGURATION in printed
    files = {path.suffix for path in (out / "tables").iterdir()}
    assert files == {".csv", ".html"}  # CSV always, as data
    for path in (out / "tables").glob("*.html"):
        assert html_cells(path.read_text()).tables == 1
    assert not (smoke_suite.results / "html").exists()
