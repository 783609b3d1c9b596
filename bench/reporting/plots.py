"""Plots from the report's tables (matplotlib's Figure API with Agg): the Pareto views, confusion matrices, validation
curves and throughput vs batch size, sized to be read from across a room, labels never on top of each other.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch
from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

from bench.reporting.columns import label
from bench.reporting.headline import HEADLINE_GROUP, PRECISION_NAMES, with_gib
from bench.reporting.tables import CONFIG_KEYS, finished_runs, grouped, sorted_rows
from common.files import atomic_write
from models import model_names

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PLAIN_NUMBER = FuncFormatter(lambda value, _: f"{value:g}")  # 30 rather than 3x10^1 on log axes
TITLE_SIZE, AXIS_SIZE, TICK_SIZE, LABEL_SIZE = 16, 15, 13, 12  # points: legible on a projector
LABEL_SPACING = 1.6  # label column pitch, in multiples of the label font size (its text is ~1.2 tall)
POINT_LABEL = "point-label"  # gid of the Pareto plots' point labels
MIN_ACCURACY_SPAN_PP = 0.2  # the accuracy axis spans at least this: 0.01 pp is then 5 % of its height
MAX_NAMED_CLASSES = 20  # confusion matrices name their classes up to this many
ACCURACY, TIME, MEMORY, LATENCY = "test_acc", "train_time_s", "peak_mem_gib", "infer_p50_ms"
# Settings a point label names when they vary within a plot (model, precision and batch are always named).
POINT_DETAILS = ["dataset", "data_source", "recipe", "epochs", "global_batch_size", "world_size", "num_machines",
                 "channels_last", "compile_mode", "communication", "lr", "stop_at_target", "eval_every", "synthetic_size",
                 "loader_order", "preset"]


def model_color(model: str) -> str:
    """One colour per registered model, stable across plots; models from elsewhere are grey."""
    names = model_names()
    return f"C{names.index(model) % 10}" if model in names else "grey"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:60] or "unknown"


def group_slug(keys: tuple) -> str:
    """File-name part for a headline group (data source, dataset, device, preset)."""
    source, dataset, device, preset = keys
    return f"{dataset}_{source}_{slug(device)}_{preset}"


def varying_label(frame: pd.DataFrame, always: list[str], optional: list[str]) -> pd.Series:
    """Per-row labels: the values of the `always` columns, then "label value" for each `optional` column whose
    value varies within `frame`."""
    parts = [frame[column].astype(str) for column in always]
    parts += [f"{label(column)} " + frame[column].astype(str) for column in optional
              if frame[column].astype(str).nunique() > 1]
    return functools.reduce(lambda left, right: left + ", " + right, parts)


def data_title(dataset: str, source: str) -> str:
    return f"{dataset}, {source} data" + (" (harness check, not the study)" if source == "synthetic" else "")


def save_figure(figure: Figure, path: Path) -> Path:
    """Render with Agg (the Figure API needs no pyplot or display) to a temp file, then rename."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def accuracy_axis(axes: Axes, values: Sequence[float]) -> None:
    """A y axis of accuracies (%) that never collapses: at least MIN_ACCURACY_SPAN_PP tall, with a margin, and
    plain tick labels with as many decimals as the ticks need (no offset such as "+9.95e1")."""
    low, high = min(values), max(values)
    half = max(high - low, MIN_ACCURACY_SPAN_PP) * 0.6
    axes.set_ylim((low + high) / 2 - half, (low + high) / 2 + half)
    axes.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))


def spread(wanted: Sequence[float], tiebreak: Sequence[float], gap: float, low: float, high: float) -> np.ndarray:
    """Positions as near `wanted` as a column allows: in the same order (ties in `tiebreak` order), at least `gap`
    apart, within [low, high] (pushed up from `low`, then down from `high`; the figure is made tall enough for
    them to fit)."""
    order = np.lexsort((tiebreak, wanted))
    placed = np.asarray(wanted, dtype=float).copy()
    floor = low - gap
    for index in order:
        placed[index] = floor = max(placed[index], floor + gap)
    ceiling = high + gap
    for index in order[::-1]:
        placed[index] = ceiling = min(placed[index], ceiling - gap)
    return placed


def label_column(figure: Figure, axes: Axes, points: pd.DataFrame, x: str, labels: pd.Series,
                 front: pd.Series) -> None:
    """Each point's label in a column right of the axes, sorted by height and spread to a minimum gap, joined to
    its point by a thin leader line; labels of points on the Pareto front in bold. Of points at one height the
    rightmost gets the lowest label, so that their leader lines do not cross."""
    to_figure = axes.transData + figure.transFigure.inverted()
    where = to_figure.transform(points[[x, ACCURACY]].to_numpy(dtype=float))
    gap = LABEL_SIZE * LABEL_SPACING / 72 / figure.get_figheight()
    column_x = axes.get_position().x1 + 0.03
    heights = spread(where[:, 1], -where[:, 0], gap, 0.03, 0.97)
    rows = zip(points[[x, ACCURACY, "model"]].itertuples(index=False), labels, front, heights)
    for (cost, accuracy, model), label, on_front, y in rows:
        figure.text(column_x + 0.005, y, label, ha="left", va="center", fontsize=LABEL_SIZE, color=model_color(model),
                    fontweight="bold" if on_front else "normal", gid=POINT_LABEL)
        figure.add_artist(ConnectionPatch((cost, accuracy), (column_x, y), coordsA=axes.transData,
                                          coordsB=figure.transFigure, color="grey", linewidth=0.6, alpha=0.7))


def pareto_figure(points: pd.DataFrame, x: str, x_label: str, title: str, log_x: bool) -> Figure:
    """Test accuracy vs a cost (`x`), one marker per configuration and device (means over seeds), the Pareto front
    of each device ringed and joined by a step line, every point labelled with model, precision and batch (and
    whatever else varies) in a column beside the axes. Sized for a projector."""
    devices = list(dict.fromkeys(points["device"].astype(str)))
    markers = dict(zip(devices, MARKERS))
    # Tall enough for the label column: one label pitch per point within 80 % of the height.
    figure = Figure(figsize=(13, max(6.5, len(points) * LABEL_SIZE * LABEL_SPACING / 72 / 0.8)))
    figure.subplots_adjust(left=0.09, right=0.56, bottom=0.16, top=0.88)
    axes = figure.subplots()
    front = pd.Series(False, index=points.index)
    for device in devices:
        here = points[points["device"].astype(str) == device]
        front[here.index] = pareto_front(list(zip(here[x], here[ACCURACY])))
        axes.scatter(here[x], here[ACCURACY], c=[model_color(model) for model in here["model"]], s=70,
                     marker=markers[device], zorder=3)
        ends = here[front[here.index]].sort_values(x)
        axes.step(ends[x], ends[ACCURACY], where="post", color="black", linewidth=1.2)
        axes.scatter(ends[x], ends[ACCURACY], s=260, facecolors="none", edgecolors="black", zorder=2)
    if log_x:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(PLAIN_NUMBER)
        low, high = axes.get_xlim()  # within about a decade the minor ticks (2, 3, ... 9) carry their numbers too
        axes.xaxis.set_minor_formatter(PLAIN_NUMBER if high / low < 30 else NullFormatter())
    accuracy_axis(axes, points[ACCURACY])
    axes.set_xlabel(x_label, fontsize=AXIS_SIZE)
    axes.set_ylabel("test accuracy, %", fontsize=AXIS_SIZE)
    axes.tick_params(which="both", labelsize=TICK_SIZE)
    axes.set_title(title, fontsize=TITLE_SIZE)
    axes.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=14,
                      label="Pareto front (bold labels)" + (" per device" if len(devices) > 1 else ""))]
    handles += [Line2D([], [], color="grey", marker=markers[device], linestyle="", markersize=9, label=device)
                for device in devices if len(devices) > 1]
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=TICK_SIZE,
                frameon=False)
    labels = varying_label(points.assign(precision=points["precision"].replace(PRECISION_NAMES),
                                         batch_size="b" + points["batch_size"].astype(str),
                                         communication=points["communication"].replace("", "DDP's defaults")),
                           ["model", "precision", "batch_size"], [*POINT_DETAILS, "device"])
    label_column(figure, axes, points, x, labels, front)
    return figure


def configuration_points(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs as one point per configuration and device: accuracy, training time and memory over seeds."""
    finished = finished_runs(runs)[lambda frame: frame["test_acc"].notna()]
    if finished.empty:
        return pd.DataFrame(columns=[*CONFIG_KEYS, "device", ACCURACY, TIME, MEMORY, LATENCY])
    measured = ["test_acc", "train_time_s", "peak_mem_allocated_bytes", "infer_p50_ms"]
    return with_gib(grouped(finished, [*CONFIG_KEYS, "device"], measured))


def plot_pareto(runs: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Per dataset and data source: accuracy vs training time, vs peak memory and vs batch-1 inference latency (the
    deployment view, where the run timed its model), each with its front."""
    paths = []
    views = (("accuracy_vs_time", TIME, "training time, s (log scale)", "training time", True),
             ("accuracy_vs_memory", MEMORY, "peak memory per process, GiB", "peak memory", False),
             ("accuracy_vs_latency", LATENCY, "inference latency at batch 1, p50 ms (log scale)",
              "inference latency", True))
    for (source, dataset), points in configuration_points(runs).groupby(["data_source", "dataset"], dropna=False):
        for name, x, x_label, what, log_x in views:
            here = points[points[x].notna()].reset_index(drop=True)
            if here.empty:
                continue
            figure = pareto_figure(here, x, x_label, f"Test accuracy vs {what}\n{data_title(dataset, source)}", log_x)
            paths.append(save_figure(figure, plots_dir / f"{name}_{dataset}_{source}.png"))
    return paths


def confusion_figure(keys: tuple, group: pd.DataFrame) -> Figure | None:
    """One headline table's test confusion matrices (summed over each model's seeds), a panel per model in its
    row order; each row of a matrix shows where a true class went, as a share of it. None without matrices."""
    matrices = {model: (np.sum([matrix for matrix in runs["test_confusion"] if matrix], axis=0), runs)
                for model, runs in sorted_rows(group, ["model"]).groupby("model", sort=False)
                if any(runs["test_confusion"])}
    if not matrices:
        return None
    columns = min(3, len(matrices))
    rows = -(-len(matrices) // columns)
    figure = Figure(figsize=(4.6 * columns + 1.2, 4.4 * rows + 1.0))
    # One dataset per figure, so the panels share their classes: names on the outer axes only.
    panels = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    for axes, (model, (counts, runs)) in zip(panels, matrices.items()):
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts * 100.0, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
        image = axes.imshow(share, cmap="Blues", vmin=0, vmax=100)
        names = next((names for names in runs["class_names"] if names), None)
        if names and len(names) <= MAX_NAMED_CLASSES:
            axes.set_xticks(range(len(names)), names, rotation=90, fontsize=10)
            axes.set_yticks(range(len(names)), names, fontsize=10)
        axes.set_xlabel("predicted", fontsize=12)
        axes.set_ylabel("true", fontsize=12)
        axes.set_title(model + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""), fontsize=13)
        axes.label_outer()
    for axes in panels[len(matrices):]:
        axes.set_axis_off()
    figure.colorbar(image, ax=list(panels), label="share of the true class, %", shrink=0.8)
    source, dataset, device, preset = keys
    figure.suptitle(f"Test confusion matrices: {data_title(dataset, source)}, {device}, preset {preset}", fontsize=14)
    return figure


def plot_confusion(chosen: pd.DataFrame, plots_dir: Path) -> dict[tuple, Path]:
    """The confusion matrices of each headline table (`tables.headline_runs`), keyed by its group."""
    figures = {keys: confusion_figure(keys, group)
               for keys, group in chosen.groupby(HEADLINE_GROUP, dropna=False, sort=False)}
    return {keys: save_figure(figure, plots_dir / f"confusion_{group_slug(keys)}.png")
            for keys, figure in figures.items() if figure is not None}


def plot_curves(runs: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Validation accuracy per epoch, one line per run, one figure per dataset (and data source)."""
    paths = []
    for (source, dataset), group in finished_runs(runs).groupby(["data_source", "dataset"], dropna=False):
        labels = varying_label(group, ["model"], ["recipe", "preset", "epochs", "global_batch_size", "precision",
                                                  "device"])
        colors = {label: f"C{index % 10}" for index, label in enumerate(dict.fromkeys(labels))}
        figure = Figure(figsize=(7.5, 5))
        axes = figure.subplots()
        labelled = set()
        for history, label in zip(group["history"], labels):
            axes.plot([row["epoch"] for row in history], [row["val_acc"] * 100 for row in history], marker="o",
                      markersize=3, color=colors[label], label=None if label in labelled else label)
            labelled.add(label)
        accuracy_axis(axes, [row["val_acc"] * 100 for history in group["history"] for row in history])
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
            group, ["model"], ["dataset", "data", "precision", "channels_last", "compile", "world_size"]))
        figure = Figure(figsize=(6.5 * len(modes), 4.8))
        for axes, mode in zip(figure.subplots(1, len(modes), squeeze=False)[0], modes):
            for label, line in group[group["mode"] == mode].groupby("label", sort=False):
                line = line.sort_values("batch_size")
                axes.plot(line["batch_size"], line["images_per_s"], marker="o", label=label)
            axes.set_xscale("log", base=2)
            batches = sorted(set(group["batch_size"]))
            axes.set_xticks(batches, [str(batch) for batch in batches])
            axes.minorticks_off()
            axes.set_xlabel("batch size per process")
            axes.set_ylabel("images/s")
            axes.set_title(f"{mode}", fontsize=10)
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize=7)
        figure.suptitle(f"Throughput vs batch size on {device}", fontsize=11)
        paths.append(save_figure(figure, plots_dir / f"throughput_{slug(device)}.png"))
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, value) pairs: True where no other point is at most as costly and at least as good
    with one of the two strictly better."""
    flags = []
    for i, (cost_i, value_i) in enumerate(points):
        dominated = any(
            cost_j <= cost_i and value_j >= value_i and (cost_j < cost_i or value_j > value_i)
            for j, (cost_j, value_j) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags
