"""The report's tables as text: markdown (tabulate's pipe tables), CSV, LaTeX and HTML (pandas), and what their
columns mean.

Every column's number format and meaning is its measurement's (bench/measuring/metrics.py) or its derived column's
(tables.DERIVED), looked up here alone; missing values stay blank in every format. CSV is the data: full precision, no
formatting, one file per table whatever the chosen format.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from bench.measuring import metrics
from bench.reporting.tables import DERIVED
from common.files import atomic_write

NUMBER_FORMATS = {**metrics.formats(), **{column: fmt for column, (fmt, _) in DERIVED.items()}}


def column_glossary(columns: Sequence[str]) -> list[str]:
    """Markdown bullet lines saying what the measured and derived columns among `columns` mean."""
    derived = [f"- `{column}`: {DERIVED[column][1]}" for column in columns if column in DERIVED]
    return [*metrics.glossary(columns), *derived]


EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex", "html": "html"}  # --format -> file extension


def markdown_table(frame: pd.DataFrame) -> str:
    """tabulate's pipe table with per-column number formats; missing values stay blank."""
    if frame.empty:
        return "_(none)_"
    cells = frame.map(lambda value: value.replace("|", "\\|") if isinstance(value, str) else value)
    cells = cells.astype(object).where(frame.notna(), None)
    return cells.to_markdown(index=False, floatfmt=[NUMBER_FORMATS.get(column) or "g" for column in frame.columns],
                             missingval="")


def cell_formatter(column: str) -> Callable[[object], str]:
    """pandas' per-column formatter: the column's number format for numbers, text as it is, blank when missing."""
    fmt = NUMBER_FORMATS.get(column) or "g"

    def cell(value: object) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            return format(value, fmt)
        return str(value)

    return cell


def render(frame: pd.DataFrame, fmt: str) -> str:
    """`frame` as a table in `fmt` (one of EXTENSIONS)."""
    if fmt == "md":
        return markdown_table(frame)
    if fmt == "csv":
        return frame.to_csv(index=False)
    formatters = {column: cell_formatter(column) for column in frame.columns}
    if fmt == "latex":
        return frame.to_latex(index=False, formatters=formatters, escape=True, na_rep="")
    return frame.to_html(index=False, formatters=formatters, na_rep="", border=0)


def write_table(path: Path, frame: pd.DataFrame, fmt: str) -> Path:
    """`frame` rendered in `fmt` to `path` with the format's extension, atomically."""
    return atomic_write(path.with_suffix(f".{EXTENSIONS[fmt]}"), lambda tmp: tmp.write_text(render(frame, fmt)))
