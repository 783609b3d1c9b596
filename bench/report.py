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
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from bench.config import DATASET_NAMES, PRESETS, STUDY_TEST_ACCURACY, STUDY_TRAIN_SECONDS, OneLineParser, paired_recipe
from bench.measure import pareto_front
from bench.records import load_records, runs_dir
from models import MODEL_NAMES

PROG = "python -m bench.report"
MIB = 2**20
# What makes two runs comparable for accuracy; the speed table splits further (see SPEED_KEYS).
ACCURACY_KEYS = ["data_source", "dataset", "model", "recipe", "preset", "epochs", "global batch", "precision", "device"]
GAIN_KEYS = ["data_source", "dataset", "preset", "epochs", "global batch", "precision", "device"]
SPEED_KEYS = ["device", "world size", "precision", "batch", "channels_last", "compile", "data_source", "preset",
              "recipe", "model", "dataset"]
SWEEP_KEYS = ["device", "world size", "model", "dataset", "input", "mode", "precision", "channels_last", "compile",
              "batch"]
# Number formats per column for the markdown tables (CSV files keep full precision); default "g".
FORMATS = {
    "test acc %": ".2f", "std": ".2f", "study %": ".2f", "diff pp": "+.2f", "train s": ",.1f", "study train s": ",.0f",
    "vanilla %": ".2f", "improved %": ".2f", "gain pp": "+.2f", "recipe part pp": "+.2f", "arch part pp": "+.2f",
    "study gain pp": "+.2f", "train img/s": ",.0f", "eval img/s": ",.0f", "epoch s": ",.2f", "target %": ".2f",
    "to target s": ",.1f", "data stall %": ".1f", "MFU %": ".2f", "peak alloc MiB": ",.0f",
    "peak reserved MiB": ",.0f", "params M": ".2f", "train GFLOPs/img": ".3f", "img/s": ",.0f", "step ms": ",.2f",
}


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


# ----- reading -------------------------------------------------------------------------------------------------

def load_sweeps(results_dir: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Speed-sweep records under results_dir/speed (none is fine), and (path, reason) for unreadable ones."""
    good, bad = [], []
    for path in sorted((results_dir / "speed").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # ValueError: bad JSON or bytes that are not UTF-8
            bad.append((path, f"not valid JSON ({error})"))
            continue
        if not isinstance(record, dict):
            bad.append((path, "not a JSON object"))
            continue
        missing = [key for key in ("model", "mode", "batch_size", "status") if key not in record]
        if missing:
            bad.append((path, f"missing fields {missing}"))
            continue
        good.append(record)
    return good, bad


RUN_COLUMNS = ["run_id", "status", "error", "model", "dataset", "data_source", "preset", "recipe", "seed", "precision",
               "device", "world size", "batch", "global batch", "epochs", "channels_last", "compile", "history"]
METRIC_COLUMNS = ["test_acc", "train_time_s", "train_images_per_s", "eval_images_per_s", "epoch_time_s", "data_stall",
                  "target_accuracy", "time_to_target_s", "mfu", "peak_mem_allocated_bytes", "peak_mem_reserved_bytes",
                  "params", "train_gflops"]


def run_rows(records: list[dict]) -> pd.DataFrame:
    """One flat row per run record: its setting, headline metrics and model facts."""
    rows = []
    for record in records:
        config, metrics, facts = record.get("config") or {}, record.get("metrics") or {}, record.get("facts") or {}
        rows.append({
            "run_id": record["run_id"], "status": record["status"], "error": record.get("error"),
            "model": record["model"], "dataset": record["dataset"], "data_source": record.get("data_source"),
            "preset": record.get("preset"), "recipe": record.get("recipe"), "seed": record.get("seed"),
            "precision": record.get("precision"), "device": record.get("device"),
            "world size": record.get("world_size"), "batch": record.get("batch_size"),
            "global batch": record.get("global_batch_size"), "epochs": config.get("epochs"),
            "channels_last": config.get("channels_last"), "compile": config.get("compile_mode") or "off",
            "history": record.get("history") or [], **metrics,
            "params": facts.get("params"), "train_gflops": facts.get("train_gflops"),
        })
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=list(dict.fromkeys([*RUN_COLUMNS, *METRIC_COLUMNS, *frame.columns])))
    for column in METRIC_COLUMNS:  # absent metrics arrive as None; make them NaN so that means skip them
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def sorted_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Real data before synthetic, datasets and models in the study's order, then the other keys."""
    order = {"data_source": ["real", "synthetic"], "dataset": list(DATASET_NAMES), "model": list(MODEL_NAMES)}

    def sort_key(column: pd.Series) -> pd.Series:
        if column.name in order:
            return column.map(lambda value: order[column.name].index(value)
                              if value in order[column.name] else len(order[column.name]))
        return column if pd.api.types.is_numeric_dtype(column) else column.astype(str)

    return frame.sort_values(keys, key=sort_key, kind="stable").reset_index(drop=True)


# ----- tables --------------------------------------------------------------------------------------------------

def study_value(table: dict[str, dict[str, float]], row: pd.Series, scale: float = 1.0) -> float:
    """The study's number for a real-data row; NaN on synthetic data, which the study never saw."""
    if row["data_source"] != "real":
        return np.nan
    return table.get(row["model"], {}).get(row["dataset"], np.nan) * scale


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per setting x model x dataset: mean and sample std over seeds, next to the study's."""
    finished = runs[runs["status"] == "finished"]
    table = finished.groupby(ACCURACY_KEYS, dropna=False, sort=False).agg(
        n=("test_acc", "size"), mean=("test_acc", "mean"), std=("test_acc", "std"),
        train_s=("train_time_s", "mean")).reset_index()
    table["test acc %"] = table.pop("mean") * 100
    table["std"] = table.pop("std") * 100
    table["study %"] = table.apply(lambda row: study_value(STUDY_TEST_ACCURACY, row, 100), axis=1, result_type="reduce")
    table["diff pp"] = table["test acc %"] - table["study %"]
    table["train s"] = table.pop("train_s")
    table["study train s"] = table.apply(lambda row: study_value(STUDY_TRAIN_SECONDS, row), axis=1, result_type="reduce")
    columns = [*ACCURACY_KEYS, "n", "test acc %", "std", "study %", "diff pp", "train s", "study train s"]
    return sorted_rows(table.reindex(columns=columns), ACCURACY_KEYS)


def gains_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Each improved model's gain over its vanilla twin, split into recipe and architecture parts.

    The baseline is the twin under its paired (paper-vanilla) recipe when that was run, else under the
    improved model's own recipe (then the whole gain is architecture). When the twin was also trained
    with the improved model's recipe (an ablation), recipe part = twin(improved recipe) - twin(baseline)
    and architecture part = improved - twin(improved recipe); the two add up to the gain.
    """
    rows = []
    for keys, group in accuracy.groupby(GAIN_KEYS, dropna=False, sort=False):
        means = {(model, recipe): value for model, recipe, value in
                 group[["model", "recipe", "test acc %"]].itertuples(index=False, name=None)}
        for (model, recipe), improved in means.items():
            if not model.endswith("_improved"):
                continue
            twin = model.removesuffix("_improved")
            base = paired_recipe(twin) if (twin, paired_recipe(twin)) in means else recipe
            if (twin, base) not in means:
                continue
            vanilla = means[(twin, base)]
            if base == recipe:
                recipe_part, arch_part = 0.0, improved - vanilla
            elif (twin, recipe) in means:
                recipe_part, arch_part = means[(twin, recipe)] - vanilla, improved - means[(twin, recipe)]
            else:
                recipe_part = arch_part = np.nan
            setting = dict(zip(GAIN_KEYS, keys))
            study = STUDY_TEST_ACCURACY if setting["data_source"] == "real" else {}
            rows.append({
                **setting, "model": model, "vanilla": twin, "vanilla recipe": base, "recipe": recipe,
                "vanilla %": vanilla, "improved %": improved, "gain pp": improved - vanilla,
                "recipe part pp": recipe_part, "arch part pp": arch_part,
                "study gain pp": (study[model][setting["dataset"]] - study[twin][setting["dataset"]]) * 100
                if study else np.nan,
            })
    columns = ["data_source", "dataset", "model", "vanilla", "vanilla recipe", "recipe", *GAIN_KEYS[2:],
               "vanilla %", "improved %", "gain pp", "recipe part pp", "arch part pp", "study gain pp"]
    return sorted_rows(pd.DataFrame(rows, columns=columns), ["data_source", "dataset", "model"])


def speed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Throughput, time, MFU and memory of finished runs, device first so hardware never mixes."""
    finished = runs[runs["status"] == "finished"]
    table = finished.groupby(SPEED_KEYS, dropna=False, sort=False).agg(
        n=("run_id", "size"), train=("train_images_per_s", "mean"), eval=("eval_images_per_s", "mean"),
        epoch=("epoch_time_s", "mean"), target=("target_accuracy", "first"), reached=("time_to_target_s", "count"),
        to_target=("time_to_target_s", "mean"), stall=("data_stall", "mean"), mfu=("mfu", "mean"),
        allocated=("peak_mem_allocated_bytes", "max"), reserved=("peak_mem_reserved_bytes", "max"),
        params=("params", "first"), gflops=("train_gflops", "first")).reset_index()
    table["reached"] = [f"{reached}/{n}" if pd.notna(target) else None
                        for reached, n, target in zip(table["reached"], table["n"], table["target"])]
    table = table.rename(columns={
        "train": "train img/s", "eval": "eval img/s", "epoch": "epoch s", "to_target": "to target s",
        "gflops": "train GFLOPs/img"})
    table["target %"] = table.pop("target") * 100
    table["data stall %"] = table.pop("stall") * 100
    table["MFU %"] = table.pop("mfu") * 100
    table["peak alloc MiB"] = table.pop("allocated") / MIB
    table["peak reserved MiB"] = table.pop("reserved") / MIB
    table["params M"] = table.pop("params") / 1e6
    columns = [*SPEED_KEYS, "n", "train img/s", "eval img/s", "epoch s", "target %", "reached", "to target s",
               "data stall %", "MFU %", "peak alloc MiB", "peak reserved MiB", "params M", "train GFLOPs/img"]
    return sorted_rows(table.reindex(columns=columns), SPEED_KEYS)


def failures_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish, with the first line of their error."""
    failed = runs[runs["status"] != "finished"].copy()
    failed["error"] = [str(error).splitlines()[0] if error else "" for error in failed["error"]]
    columns = ["status", "model", "dataset", "data_source", "recipe", "device", "run_id", "error"]
    return sorted_rows(failed.reindex(columns=columns), ["status", "dataset", "model", "run_id"])


def sweep_table(sweeps: list[dict]) -> pd.DataFrame:
    """One row per speed-sweep point (bench/speed.py)."""
    rows = [{
        "device": record.get("device"), "world size": record.get("world_size"), "model": record["model"],
        "dataset": record.get("dataset") or f"{record.get('in_channels')} channels", "input": record.get("data"),
        "mode": record["mode"], "precision": record.get("precision"), "channels_last": record.get("channels_last"),
        "compile": record.get("compile"), "batch": record["batch_size"], "status": record["status"],
        "img/s": record.get("images_per_s"), "step ms": record.get("step_time_ms"),
        "peak alloc MiB": record.get("peak_mem_allocated_bytes"),
        "peak reserved MiB": record.get("peak_mem_reserved_bytes"), "MFU %": record.get("mfu"),
    } for record in sweeps]
    table = pd.DataFrame(rows, columns=[*SWEEP_KEYS, "status", "img/s", "step ms", "peak alloc MiB",
                                        "peak reserved MiB", "MFU %"])
    for column in ("img/s", "step ms", "peak alloc MiB", "peak reserved MiB", "MFU %"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["peak alloc MiB"] /= MIB
    table["peak reserved MiB"] /= MIB
    table["MFU %"] *= 100
    return sorted_rows(table, SWEEP_KEYS)


# ----- plots ---------------------------------------------------------------------------------------------------

MODEL_COLORS = {name: f"C{index}" for index, name in enumerate(MODEL_NAMES)}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PLAIN_NUMBER = FuncFormatter(lambda value, _: f"{value:g}")  # 30 rather than 3x10^1 on log axes


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:60] or "unknown"


def varying_label(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Per-row labels from the first column plus every other column whose value varies within `frame`."""
    shown = [columns[0], *(column for column in columns[1:] if frame[column].astype(str).nunique() > 1)]
    return frame[shown].astype(str).agg(", ".join, axis=1)


def data_title(dataset: str, source: str) -> str:
    return f"{dataset}, {source} data" + (" (harness check, not the study)" if source == "synthetic" else "")


def save_figure(figure: Figure, path: Path) -> Path:
    """Render with Agg (the Figure API needs no pyplot or display) to a temp file, then rename."""
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plot_accuracy_vs_time(runs: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Test accuracy vs training seconds, one marker per run; the Pareto front is drawn per device."""
    finished = runs[(runs["status"] == "finished") & runs["train_time_s"].notna() & runs["test_acc"].notna()]
    paths = []
    for (source, dataset), group in finished.groupby(["data_source", "dataset"], dropna=False):
        figure = Figure(figsize=(7.5, 5))
        axes = figure.subplots()
        devices = list(dict.fromkeys(group["device"].astype(str)))
        markers = dict(zip(devices, MARKERS))
        for run in group.itertuples():
            axes.scatter(run.train_time_s, run.test_acc * 100, color=MODEL_COLORS.get(run.model, "grey"),
                         marker=markers[str(run.device)], zorder=3)
        handles = [Line2D([], [], color=MODEL_COLORS.get(model, "grey"), marker="o", linestyle="", label=model)
                   for model in MODEL_NAMES if model in set(group["model"])]
        for device in devices:
            runs_here = group[group["device"].astype(str) == device]
            front = runs_here[pareto_front(list(zip(runs_here["train_time_s"], runs_here["test_acc"])))]
            front = front.sort_values("train_time_s")
            axes.step(front["train_time_s"], front["test_acc"] * 100, where="post", color="black", linewidth=1)
            axes.scatter(front["train_time_s"], front["test_acc"] * 100, s=160, facecolors="none",
                         edgecolors="black", zorder=2)
            if len(devices) > 1:
                handles.append(Line2D([], [], color="grey", marker=markers[device], linestyle="", label=device))
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=10,
                              label="Pareto front" + (" (per device)" if len(devices) > 1 else "")))
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(PLAIN_NUMBER)
        axes.xaxis.set_minor_formatter(PLAIN_NUMBER)
        axes.set_xlabel("training time, s (log scale)")
        axes.set_ylabel("test accuracy, %")
        axes.set_title(f"Test accuracy vs training time: {data_title(dataset, source)}"
                       + ("" if len(devices) > 1 else f"\n{devices[0]}"), fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(handles=handles, fontsize=8)
        paths.append(save_figure(figure, plots_dir / f"accuracy_vs_time_{dataset}_{source}.png"))
    return paths


def plot_curves(runs: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Validation accuracy per epoch, one line per run, one figure per dataset (and data source)."""
    finished = runs[runs["status"] == "finished"]
    paths = []
    for (source, dataset), group in finished.groupby(["data_source", "dataset"], dropna=False):
        labels = varying_label(group, ["model", "recipe", "preset", "epochs", "global batch", "precision", "device"])
        colors = {label: f"C{index % 10}" for index, label in enumerate(dict.fromkeys(labels))}
        figure = Figure(figsize=(7.5, 5))
        axes = figure.subplots()
        labelled = set()
        for history, label in zip(group["history"], labels):
            axes.plot([row["epoch"] for row in history], [row["val_acc"] * 100 for row in history], marker="o",
                      markersize=3, color=colors[label], label=None if label in labelled else label)
            labelled.add(label)
        axes.set_xlabel("epoch")
        axes.set_ylabel("validation accuracy, %")
        axes.set_title(f"Validation accuracy per epoch: {data_title(dataset, source)}", fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
        paths.append(save_figure(figure, plots_dir / f"val_accuracy_{dataset}_{source}.png"))
    return paths


def plot_throughput(sweep: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Images/s vs batch size from the speed sweeps, one figure per device, one panel per mode."""
    done = sweep[sweep["status"] == "ok"]
    paths = []
    for device, group in done.groupby("device", dropna=False):
        modes = [mode for mode in ("train", "infer") if mode in set(group["mode"])]
        group = group.assign(label=varying_label(
            group, ["model", "dataset", "input", "precision", "channels_last", "compile", "world size"]))
        figure = Figure(figsize=(6.5 * len(modes), 4.8))
        for axes, mode in zip(figure.subplots(1, len(modes), squeeze=False)[0], modes):
            for label, line in group[group["mode"] == mode].groupby("label", sort=False):
                line = line.sort_values("batch")
                axes.plot(line["batch"], line["img/s"], marker="o", label=label)
            axes.set_xscale("log", base=2)
            axes.set_xticks(sorted(set(group["batch"])), [str(batch) for batch in sorted(set(group["batch"]))])
            axes.minorticks_off()
            axes.set_xlabel("batch size per process")
            axes.set_ylabel("images/s")
            axes.set_title(f"{mode}", fontsize=10)
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize=7)
        figure.suptitle(f"Throughput vs batch size on {device}", fontsize=11)
        paths.append(save_figure(figure, plots_dir / f"throughput_{slug(device)}.png"))
    return paths


# ----- writing -------------------------------------------------------------------------------------------------

def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Let `write` fill a temp file next to `path`, then rename it over `path` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def markdown_table(frame: pd.DataFrame) -> str:
    """tabulate's pipe table with per-column number formats; missing values stay blank."""
    if frame.empty:
        return "_(none)_"
    shown = frame.map(lambda value: value.replace("|", "\\|") if isinstance(value, str) else value)
    shown = shown.astype(object).where(frame.notna(), None)
    return shown.to_markdown(index=False, floatfmt=[FORMATS.get(column, "g") for column in frame.columns],
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


EXPLANATIONS = {
    "accuracy": "Test accuracy after the last epoch: mean over seeds, `std` = sample standard deviation over the "
                "`n` runs (blank for one run). `study %` and `study train s` are the published numbers (SPEC.md; "
                "one Colab GPU, 50 epochs, seconds indicative only) and `diff pp` = ours - study in percentage points; "
                "they are given for real data only.",
    "gains": "Gain of each improved model over its vanilla twin (pp). The baseline is the twin under paper-vanilla "
             "when that was run, else under the improved model's recipe (then the gain is all architecture). "
             "With an ablation run (the twin trained with the improved recipe) the gain splits into "
             "`recipe part` + `arch part`.",
    "speed": "Means over seeds (`n`); memory is the peak over seeds. Images/s are summed over processes and timed "
             "after warm-up; `data stall %` is the share of the timed window spent waiting for data; "
             "`to target s` = training seconds until validation accuracy first reached `target %` (mean over the "
             "runs that reached it, `reached` of `n`). On CPU, memory is the process's peak RSS.",
    "speed_sweep": "Points from `python -m bench.speed` (median of timed windows; `input` says whether batches came "
                   "from device-resident tensors or the FFCV loader).",
    "failures": "Runs that diverged, ran out of memory or failed; the first line of each error.",
}
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
        lines += [f"## {TITLES[name]}", "", EXPLANATIONS[name], "", markdown_table(table), "",
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
    csv_paths = {name: write_atomic(results_dir / "tables" / f"{name}.csv",
                                    lambda tmp, table=table: table.to_csv(tmp, index=False))
                 for name, table in tables.items()}
    plots_dir = results_dir / "plots"
    plot_paths = [*plot_accuracy_vs_time(runs, plots_dir), *plot_curves(runs, plots_dir),
                  *plot_throughput(tables["speed_sweep"], plots_dir)]
    text = report_markdown(results_dir, tables, csv_paths, plot_paths, runs, len(kept_sweeps), filters, skipped)
    report_path = write_atomic(results_dir / "REPORT.md", lambda tmp: tmp.write_text(text))
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
    parser.add_argument("--dataset", choices=DATASET_NAMES, help="only this dataset")
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
