"""The report's tables as text: markdown (tabulate's pipe tables), CSV, LaTeX and HTML (pandas).

Tables arrive with their columns named as in the code; here they are headed with their labels and formatted with
their number formats, missing values blank in every format. CSV is the data: full
precision, no formatting, one file per table whatever the chosen format.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.reporting.columns import column, labelled
from common.files import atomic_write

EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex", "html": "html"}  # --format -> file extension


def number_format(name: str) -> str:
    return column(name).fmt or "g"


def markdown_table(frame: pd.DataFrame) -> str:
    """tabulate's pipe table with per-column number formats; missing values stay blank."""
    if frame.empty:
        return "_(none)_"
    cells = frame.map(lambda value: value.replace("|", "\\|") if isinstance(value, str) else value)
    cells = cells.astype(object).where(frame.notna(), None)
    return labelled(cells).to_markdown(index=False, floatfmt=[number_format(name) for name in frame.columns],
                                       missingval="")


def cell_formatter(name: str) -> Callable[[object], str]:
    """pandas' per-column formatter: the column's number format for numbers, text as it is, blank when missing."""
    fmt = number_format(name)

    def cell(value: object) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            return format(value, fmt)
        return str(value)

    return cell


def render(frame: pd.DataFrame, fmt: str) -> str:
    """`frame` as a table in `fmt` (one of EXTENSIONS), headed with its labels."""
    if fmt == "md":
        return markdown_table(frame)
    if fmt == "csv":
        return labelled(frame).to_csv(index=False)
    formatters = [cell_formatter(name) for name in frame.columns]
    shown = labelled(frame)
    if fmt == "latex":
        return shown.to_latex(index=False, formatters=formatters, escape=True, na_rep="")
    return shown.to_html(index=False, formatters=formatters, na_rep="", border=0)


def write_table(path: Path, frame: pd.DataFrame, fmt: str) -> Path:
    """`frame` rendered in `fmt` to `path` with the format's extension, atomically."""
    return atomic_write(path.with_suffix(f".{EXTENSIONS[fmt]}"), lambda tmp: tmp.write_text(render(frame, fmt)))
