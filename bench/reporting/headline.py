"""The report's headline: one table per dataset, data source, device and preset, one row per model (the configuration
of its most recent run, over that configuration's seeds), beside the study's numbers; and each row's weakest classes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.measuring.metrics import BY_KEY, MIB, mlperf_time, shown
from bench.reporting.columns import DERIVED, WEAKEST
from bench.reporting.tables import CONFIG_KEYS, finished_runs, grouped, sorted_rows, study_value, with_study

# One headline table per dataset, data source, device and preset; in it one row per model.
HEADLINE_GROUP = ["data_source", "dataset", "device", "preset"]
# The headline's columns, left to right: adding one is one line here. A metric declared in
# bench/measuring/metrics.py is aggregated over seeds; any other name is derived in headline_table (its label, format
# and meaning in DERIVED).
HEADLINE_COLUMNS = ["model", "n", "test_acc", "study_acc", "diff_pp", "train_time_s", "study_train_s", "speed_up",
                    "time_to_target_s", "train_images_per_s", "infer_p50_ms", "peak_mem_gib"]
# Measurements the derived columns are computed from, aggregated whether shown or not.
HEADLINE_INPUTS = ("test_acc", "train_time_s", "time_to_target_s", "peak_mem_allocated_bytes")
HEADLINE_METRICS = list(dict.fromkeys([*HEADLINE_INPUTS, *(name for name in HEADLINE_COLUMNS if name in BY_KEY)]))
PRECISION_NAMES = {"no": "fp32"}  # Accelerate's "no" mixed precision, as people say it


def config_label(row: pd.Series) -> str:
    """A configuration in words, from the keys that the headline's grouping and row leave open; settings at their
    default (channels_last off, compile off, no lr override, the study's accuracy as target, ...) are not named."""
    epochs, world = row["epochs"], row["world_size"]
    parts = [f"recipe {row['recipe']}", f"{epochs:g} epoch{'' if epochs == 1 else 's'}" if pd.notna(epochs) else None,
             f"batch {row['batch_size']} x {world} process{'' if world == 1 else 'es'}"
             + (f" on {row['num_machines']} machines" if row.get("num_machines", 1) > 1 else ""),
             f"precision {PRECISION_NAMES.get(row['precision'], row['precision'])}",
             "channels_last" if row["channels_last"] else None,
             f"{row['loader_order'].replace('_', '-')} order" if row.get("loader_order", "random") != "random" else None,
             f"compile {row['compile_mode']}" if row["compile_mode"] != "off" else None, row.get("communication") or None]
    optional = {"lr": "lr {:g}", "eval_every": "validation every {:g} steps", "synthetic_size": "{} synthetic images",
                "target": "target {:.2%}"}
    study_target = study_value(row, "test_acc_pct") / 100
    parts += [text.format(row[key]) for key, text in optional.items()
              if pd.notna(row[key]) and not (key == "target" and np.isclose(row[key], study_target))]
    return ", ".join([part for part in parts if part] + (["stop at target"] if row["stop_at_target"] else []))


def with_gib(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its peak allocated memory (aggregated, in MiB) also in GiB: the headline's and the plots' unit."""
    return table.assign(peak_mem_gib=table["peak_mem_allocated_bytes"] * MIB / 2**30)


def headline_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs behind the headline: per group and model, every seed of the configuration of the model's
    most recent run (by started_at, time zones respected), with `configs` = the model's configurations there."""
    finished = finished_runs(runs)
    identity = list(dict.fromkeys([*HEADLINE_GROUP, *CONFIG_KEYS]))
    started = pd.to_datetime(finished["started_at"], utc=True, errors="coerce", format="ISO8601")
    newest_first = finished.assign(started=started).sort_values("started", ascending=False, na_position="last",
                                                                kind="stable")
    latest = newest_first.drop_duplicates([*HEADLINE_GROUP, "model"])[identity]
    configs = (finished.drop_duplicates(identity).groupby([*HEADLINE_GROUP, "model"], dropna=False).size()
               .rename("configs").reset_index())
    return finished.merge(latest, on=identity).merge(configs, on=[*HEADLINE_GROUP, "model"])


def study_speed(group: pd.DataFrame) -> dict:
    """Time to the study's accuracy over a configuration's seeds (MLPerf's rule) and how many runs got there."""
    seconds, _, reached, runs = mlperf_time(group["to_study_s"])
    return {"to_study_s": seconds, "study_reached": f"{reached}/{runs}"}


def headline_table(chosen: pd.DataFrame) -> pd.DataFrame:
    """One row per group and model from `headline_runs`: its configuration, the headline metrics over its seeds,
    and the study's numbers beside them (real data only). The speed-up compares like with like: the study's
    training seconds over ours to the study's accuracy, none for a configuration that did not get there."""
    keys = list(dict.fromkeys([*HEADLINE_GROUP, "model", *CONFIG_KEYS, "configs"]))
    aggregated = [name for key in HEADLINE_METRICS for name in (key, *([f"{key}_std"] if BY_KEY[key].spread else []))]
    derived = ["study_acc", "diff_pp", "study_train_s", "to_study_s", "study_reached", "speed_up", "reached",
               "peak_mem_gib"]
    columns = [*keys, "n", *dict.fromkeys([*aggregated, *derived])]
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    table = with_study(grouped(chosen, keys, HEADLINE_METRICS, facts=study_speed))
    table["speed_up"] = table["study_train_s"] / table["to_study_s"]
    table["study_reached"] = table["study_reached"].where(table["study_train_s"].notna(), None)
    return sorted_rows(with_gib(table).reindex(columns=columns), [*HEADLINE_GROUP, "model"])


def with_reached(value: float, reached: str | None, fmt: str, missed: str = "not reached") -> str | None:
    """A seed-aggregated figure as shown: the value, with how many runs got there when not all did ("41.2 (4/5)"),
    or `missed` ("not reached (0/3)"); blank where there was nothing to reach."""
    if reached is None or pd.isna(reached):
        return None
    hit, runs = (int(part) for part in reached.split("/"))
    if pd.isna(value):
        return f"{missed if hit == 0 else 'no result'} ({reached})"
    return format(value, fmt) + ("" if hit == runs else f" ({reached})")


def headline_view(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns a headline table shows; time to target and the speed-up with their reached counts when some runs
    missed ("41.2 (4/5)", "not reached (0/3)"), blank without a target or a study number."""
    view = rows[HEADLINE_COLUMNS].copy()
    view["time_to_target_s"] = [with_reached(time, reached, BY_KEY["time_to_target_s"].fmt)
                                for time, reached in zip(rows["time_to_target_s"], rows["reached"])]
    view["speed_up"] = [with_reached(ratio, reached, DERIVED["speed_up"].fmt)
                        for ratio, reached in zip(rows["speed_up"], rows["study_reached"])]
    return view.reset_index(drop=True)


def group_title(keys: tuple) -> str:
    source, dataset, device, preset = keys
    return f"{dataset}, {source} data, {device}, preset {preset}"


def headline_caption(rows: pd.DataFrame) -> str:
    """The configuration(s) a headline table shows, and which models had others to choose from."""
    models: dict[str, list[str]] = {}  # configuration in words -> the models shown with it
    for _, row in rows.iterrows():
        models.setdefault(config_label(row), []).append(row["model"])
    if len(models) == 1:
        text = f"Configuration: {next(iter(models))}."
    else:
        text = "Configurations: " + "; ".join(f"{label} ({', '.join(names)})" for label, names in models.items()) + "."
    several = rows[rows["configs"] > 1]
    if not several.empty:
        text += (" " + ", ".join(f"{model} has {count} configurations" for model, count in
                                 zip(several["model"], several["configs"]))
                 + " here: each row is the configuration of the model's most recent run, over its seeds.")
    return text


def confusions_over_seeds(group: pd.DataFrame) -> list[tuple[int, int, int, int]]:
    """(true, predicted, images, images of the true class) summed over the seeds' top confusions, most frequent
    first (each seed lists its most frequent ones)."""
    counts: dict[tuple[int, int], int] = {}
    totals: dict[tuple[int, int], int] = {}
    for pairs in group["test_top_confusions"]:
        for true, predicted, images, of in pairs or ():
            counts[true, predicted] = counts.get((true, predicted), 0) + images
            totals[true, predicted] = totals.get((true, predicted), 0) + of
    return sorted(((*pair, images, totals[pair]) for pair, images in counts.items()), key=lambda row: (-row[2], row[:2]))


def weakest_classes(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per group and model of the headline, its WEAKEST lowest per-class test accuracies (each the mean over the seeds
    of its headline configuration) and its WEAKEST most frequent confusions (summed over those seeds). Classes the
    test split never showed are no weakness; records without per-class results are left out."""
    columns = [*HEADLINE_GROUP, "model", *(f"weakest_{rank}{part}" for rank in range(1, WEAKEST + 1)
                                          for part in ("", "_acc")),
               *(f"confusion_{rank}" for rank in range(1, WEAKEST + 1))]
    rows = []
    for keys, group in chosen.groupby([*HEADLINE_GROUP, "model"], dropna=False, sort=False):
        per_class = [np.where(np.sum(confusion, axis=1) > 0, values, np.nan) if confusion else np.asarray(values)
                     for values, confusion in zip(group["test_per_class_acc"], group["test_confusion"]) if values]
        if not per_class:
            continue
        mean = pd.DataFrame(per_class).mean()  # per class over seeds; NaN where no seed saw the class
        names = next((names for names in group["class_names"] if names), None) or [str(i) for i in mean.index]
        row = dict(zip([*HEADLINE_GROUP, "model"], keys))
        for rank, (index, value) in enumerate(mean.dropna().sort_values(kind="stable").head(WEAKEST).items(), start=1):
            row[f"weakest_{rank}"], row[f"weakest_{rank}_acc"] = names[index], shown(BY_KEY["test_acc"], value)
        for rank, (true, predicted, images, of) in enumerate(confusions_over_seeds(group)[:WEAKEST], start=1):
            row[f"confusion_{rank}"] = f"{names[true]} -> {names[predicted]} ({images}/{of})"
        rows.append(row)
    return sorted_rows(pd.DataFrame(rows, columns=columns), [*HEADLINE_GROUP, "model"])
