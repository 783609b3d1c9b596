"""How a configuration scales: series found in the records (the same configuration but for its size, batch and seed, on
one device kind and link), per point throughput, speed-up, efficiency, exposed communication, bandwidth and time to
target, what bounds it only beyond the measured spread, and the speed-up plot (docs/scaling-out.md).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.measuring.link import link_label
from bench.measuring.metrics import BY_KEY, mlperf_time, shown
from bench.reporting import columns
from bench.reporting.plots import data_title, save_figure, slug
from bench.reporting.render import cell_formatter, markdown_table, number_format
from bench.results.schema import RunRecord
from bench.suite.config import Communication

BOUND = 0.10  # exposed communication or data stall above this share of the step bounds a point (`bound`'s meaning)
VARYING = ("world_size", "num_machines", "batch_size", "seed")  # what changes along a series (seeds aggregate)
POINT = ["identity", "model", "dataset", "data_source", "device", "link", "levers", "world_size", "num_machines",
         "batch_size", "global_batch_size"]
MEANS = ["peak_lr", "train_images_per_s", "comm_step_ms", "compute_step_ms", "exposed_comm_ms", "exposed_comm_std_ms",
         "exposed_comm_share", "rank_skew", "grad_bytes", "wire_bytes", "bucket_algbw_gbs", "bucket_busbw_gbs",
         "grad_algbw_gbs", "grad_busbw_gbs", "data_stall", "peak_mem_allocated_bytes", "epochs_to_target",
         "energy_to_target_kwh", "cost_to_target_usd"]
COLUMNS = ["series", "mode", "axis", "model", "dataset", "data_source", "device", "link", "levers", "size", "n",
           "world_size", "num_machines", "global_batch_size", "batch_size", "peak_lr", "train_images_per_s",
           "train_images_per_s_std", "images_per_s_per_process", "scaling_speed_up", "efficiency", "comm_step_ms",
           "compute_step_ms", "exposed_comm_ms", "exposed_comm_std_ms", "exposed_comm_share", "rank_skew", "grad_bytes",
           "wire_bytes", "bucket_algbw_gbs", "bucket_busbw_gbs", "grad_algbw_gbs", "grad_busbw_gbs", "data_stall",
           "loader_threads", "peak_mem_allocated_bytes", "epochs_to_target", "time_to_target_s", "reached",
           "ttt_speed_up", "energy_to_target_kwh", "cost_to_target_usd", "bound", "note"]
SHOWN = ["world_size", "num_machines", "global_batch_size", "batch_size", "peak_lr", "train_images_per_s",
         "scaling_speed_up", "efficiency", "exposed_comm_share", "grad_busbw_gbs", "data_stall", "epochs_to_target",
         "time_to_target_s", "ttt_speed_up", "bound", "note"]


# ----- the table -----------------------------------------------------------------------------------------------

def identity(record: RunRecord) -> str:
    """A record's configuration without what varies along a series: one string for every point of a series."""
    return json.dumps({key: value for key, value in record.config.items() if key not in VARYING}, sort_keys=True,
                      default=str)


def point_rows(records: list[RunRecord]) -> pd.DataFrame:
    """One row per record: where it sits in a series, and its measurements on the report's scale."""
    frame = pd.DataFrame([{
        "identity": identity(record), "model": record.model, "dataset": record.dataset,
        "data_source": record.data_source, "device": record.device,
        "link": link_label(record.env.get("link")) if (record.world_size or 1) > 1 else None,
        "levers": Communication(**record.config.get("communication") or {}).words(),
        "world_size": record.world_size or 1, "num_machines": record.num_machines, "batch_size": record.batch_size,
        "global_batch_size": record.global_batch_size, "status": record.status,
        "note": None if record.status == "finished" else f"{record.status}: {(record.error or '').splitlines()[0]}",
        "loader_threads": record.settings.get("num_workers"), "target": record.config.get("target_accuracy"),
        **{key: shown(BY_KEY[key], record.metrics.get(key)) for key in [*MEANS, "time_to_target_s"]},
    } for record in records])
    for key in [*MEANS, "time_to_target_s"]:
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    return frame


def aggregated(points: pd.DataFrame) -> pd.DataFrame:
    """One row per point (configuration and size): its seeds' means, spreads and time to target (MLPerf's rule)."""
    rows = []
    for keys, group in points.groupby(POINT, dropna=False, sort=False):
        done = group[group["status"] == "finished"]
        time, _, reached, runs = mlperf_time(done["time_to_target_s"]) if len(done) else (math.nan, 0, 0, 0)
        rows.append({**dict(zip(POINT, keys)), "n": len(done), "note": None if len(done) else group["note"].iloc[0],
                     "loader_threads": group["loader_threads"].iloc[0], **{key: done[key].mean() for key in MEANS},
                     "train_images_per_s_std": done["train_images_per_s"].std(), "time_to_target_s": time,
                     "reached": f"{reached}/{runs}" if done["target"].notna().any() else None})
    return pd.DataFrame(rows)


def axes(here: pd.DataFrame):
    """(axis, its points with their sizes) over processes on one machine, and over machines at each number of
    processes per machine that the points hold."""
    one = here[here["num_machines"] == 1]
    yield "processes", one.assign(size=one["world_size"])
    per_machine = here["world_size"] // here["num_machines"]
    for count in sorted(set(per_machine[here["num_machines"] > 1])):
        members = here[per_machine == count]
        axis = f"machines, {count} process{'' if count == 1 else 'es'} each"
        yield axis, members.assign(size=members["num_machines"])


def series(points: pd.DataFrame):
    """Every series among the aggregated points: (mode, axis, link, its rows by size)."""
    for _, group in points.groupby(["identity", "device"], dropna=False, sort=False):
        alone = group[group["world_size"] == 1]
        for link in group["link"].dropna().unique().tolist() or [None]:
            here = pd.concat([alone, group[group["link"] == link]]) if link else alone
            for axis, members in axes(here):
                for mode, fixed in (("weak", "batch_size"), ("strong", "global_batch_size")):
                    for _, line in members.groupby(fixed, sort=False):
                        if line["size"].nunique() > 1:
                            yield mode, axis, link, line.sort_values("size")


def bound(row: pd.Series) -> str | None:
    """What limits a point beyond its measured spread (the `bound` column's meaning says how)."""
    if row["n"] == 0:
        return None
    share, step = row["exposed_comm_share"] / 100, row["comm_step_ms"]
    spread = 2 * row["exposed_comm_std_ms"] / step if pd.notna(step) and pd.notna(row["exposed_comm_std_ms"]) \
        else math.inf
    limits = ["communication"] if pd.notna(share) and share - spread > BOUND else []
    limits += ["input"] if pd.notna(row["data_stall"]) and row["data_stall"] / 100 > BOUND else []
    if limits:
        return ", ".join(limits)
    return "compute" if row["world_size"] == 1 or (pd.notna(share) and share + spread < BOUND) else "unclear"


def with_speed_up(line: pd.DataFrame) -> pd.DataFrame:
    """A series' rows with speed-up, efficiency and time-to-target speed-up over its smallest finished point, and
    what bounds each point."""
    done = line[line["n"] > 0]
    base = done.iloc[0] if len(done) else pd.Series(np.nan, index=line.columns)
    speed_up = line["train_images_per_s"] / base["train_images_per_s"]
    return line.assign(images_per_s_per_process=line["train_images_per_s"] / line["world_size"], scaling_speed_up=speed_up,
                       efficiency=speed_up / (line["size"] / base["size"]) * 100,
                       ttt_speed_up=base["time_to_target_s"] / line["time_to_target_s"],
                       bound=[bound(row) for _, row in line.iterrows()])


def scaling_table(records: list[RunRecord]) -> pd.DataFrame:
    """Every series' points, a row each (a point in two series is in both), numbered by series."""
    points = aggregated(point_rows(records)) if records else None
    lines = [with_speed_up(line).assign(series=number, mode=mode, axis=axis, link=link)
             for number, (mode, axis, link, line) in enumerate(series(points) if points is not None else [], start=1)]
    return pd.concat(lines, ignore_index=True)[COLUMNS] if lines else pd.DataFrame(columns=COLUMNS)


# ----- REPORT.md -----------------------------------------------------------------------------------------------

def cell(name: str, value, spread=None) -> str:
    """One value as its column shows it (render.py), with its spread beside it (`12.3 ± 4.1`)."""
    text = cell_formatter(name)(value)
    with_spread = text and not isinstance(value, str) and spread is not None and pd.notna(spread)
    return text + (f" ± {format(spread, number_format(name))}" if with_spread else "")


def view(rows: pd.DataFrame) -> pd.DataFrame:
    """A series as REPORT.md shows it: the columns of SHOWN formatted, spreads beside their values (img/s over seeds,
    exposed communication over the probe's repeats), time to target with how many runs reached it when not all did."""
    cells = []
    for _, row in rows.iterrows():
        spreads = {"train_images_per_s": row["train_images_per_s_std"] if row["n"] > 1 else None,
                   "exposed_comm_share": row["exposed_comm_std_ms"] / row["comm_step_ms"] * 100}
        shown_row = {name: cell(name, row[name], spreads.get(name)) for name in SHOWN}
        if row["reached"] and int(row["reached"].split("/")[0]) < int(row["reached"].split("/")[1]):
            shown_row["time_to_target_s"] = f"{shown_row['time_to_target_s'] or 'not reached'} ({row['reached']})"
        cells.append(shown_row)
    return pd.DataFrame(cells)


def series_words(first: pd.Series) -> list[str]:
    """What makes a series one: mode and axis, what is fixed, the levers away from DDP's defaults, the link."""
    fixed = (f"{first['batch_size']} per process" if first["mode"] == "weak"
             else f"global batch {first['global_batch_size']}")
    words = [f"{first['mode']} scaling over {first['axis']}, {fixed}", first["levers"],
             f"link {first['link']}" if first["link"] else ""]
    return [word for word in words if word]


def title(rows: pd.DataFrame) -> str:
    """A series' heading: model, data and device, then its words."""
    first = rows.iloc[0]
    return "; ".join([f"{first['model']}, {first['dataset']} ({first['data_source']} data), {first['device']}",
                      *series_words(first)])


def verdict(rows: pd.DataFrame) -> str:
    """A series in a sentence: from which size on it is communication- or input-bound (beyond the spread), and its
    efficiency at its largest finished point."""
    unit = "machines" if rows.iloc[0]["axis"].startswith("machines") else "processes"
    sizes, bounds = rows["size"].tolist(), [value or "" for value in rows["bound"]]
    said = []
    for limit in ("communication", "input"):
        hit = [limit in value for value in bounds]
        if hit[-1]:  # bound at the largest point: from where its last unbroken stretch of bound points begins
            start = len(hit) - 1
            while start and hit[start - 1]:
                start -= 1
            said.append(f"{limit}-bound from {sizes[start]} {unit}")
    done = rows[rows["n"] > 0]
    tail = (f"efficiency {done['efficiency'].iloc[-1]:.0f} % at {done['size'].iloc[-1]} {unit}" if len(done) > 1
            else "fewer than two finished points")
    return f"{'; '.join(said) if said else 'Not communication- or input-bound beyond the measured spread'}; {tail}."


def glossary() -> str:
    return "\n".join(columns.glossary(SHOWN))


def sections(table: pd.DataFrame) -> list[dict]:
    """Each series for REPORT.md: its heading, its table and its verdict."""
    return [{"title": title(rows), "table": markdown_table(view(rows)), "verdict": verdict(rows)}
            for _, rows in table.groupby("series", sort=True)]


# ----- the plot ------------------------------------------------------------------------------------------------

def plot_scaling(table: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Per model and data: speed-up against processes, one line per series (never two devices or links on one), the
    ideal beside them and each point's efficiency written on it."""
    paths = []
    for (model, dataset, source), group in table[table["n"] > 0].groupby(["model", "dataset", "data_source"],
                                                                        sort=False):
        figure = Figure(figsize=(8, 5.5))
        axes = figure.subplots()
        for index, (number, line) in enumerate(group.groupby("series", sort=True)):
            marker = "osD^v"[index % 5]
            axes.plot(line["world_size"], line["scaling_speed_up"], marker=marker, color=f"C{index % 10}",
                      label=f"{number}: " + "; ".join([*series_words(line.iloc[0]), line["device"].iloc[0]]))
            for x, y, efficiency in zip(line["world_size"], line["scaling_speed_up"], line["efficiency"]):
                axes.annotate(f"{efficiency:.0f} %", (x, y), textcoords="offset points", xytext=(6, -12), fontsize=9)
            base = line.iloc[0]
            axes.plot(line["world_size"], line["world_size"] / base["world_size"], linestyle="--", color="grey",
                      linewidth=1, label="ideal" if index == 0 else None)
        sizes = sorted(set(group["world_size"]))
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.set_xlabel("processes")
        axes.set_ylabel("speed-up over the smallest point (train img/s)")
        axes.set_title(f"Scaling: {model}, {data_title(dataset, source)}", fontsize=11)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
        paths.append(save_figure(figure, plots_dir / f"scaling_{slug(model)}_{dataset}_{source}.png"))
    return paths
