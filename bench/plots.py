"""Plots from the report's tables (matplotlib's Figure API with Agg: no pyplot, no display): test accuracy
vs training time with its Pareto front, validation curves, and throughput vs batch size."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from data.files import atomic_write
from models import model_names

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PLAIN_NUMBER = FuncFormatter(lambda value, _: f"{value:g}")  # 30 rather than 3x10^1 on log axes


def model_color(model: str) -> str:
    """One colour per registered model, stable across plots; models from elsewhere are grey."""
    names = model_names()
    return f"C{names.index(model) % 10}" if model in names else "grey"


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
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


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
            axes.scatter(run.train_time_s, run.test_acc * 100, color=model_color(run.model),
                         marker=markers[str(run.device)], zorder=3)
        handles = [Line2D([], [], color=model_color(model), marker="o", linestyle="", label=model)
                   for model in dict.fromkeys(group["model"])]
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
