"""Run and sweep records -> pandas tables, grouped by everything that changes a result so that settings never silently
merge: one row per run, and per configuration the accuracy, gains, speed, failures and sweeps.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from bench.measuring.confusion import top_confusions
from bench.measuring.measure import time_to_target
from bench.measuring.metrics import BY_KEY, RUN_KEYS, aggregate
from bench.results.schema import RunRecord, SweepRecord
from bench.suite.config import Communication
from bench.suite.recipes import paired_recipe
from data.datasets import dataset_names
from models import model_entry, model_names, study_result

# What makes two runs comparable for accuracy; the speed table splits further (see SPEED_KEYS).
ACCURACY_KEYS = ["data_source", "dataset", "model", "recipe", "preset", "epochs", "global_batch_size", "precision",
                 "device"]
GAIN_KEYS = ["data_source", "dataset", "preset", "epochs", "global_batch_size", "precision", "device"]
SPEED_KEYS = ["device", "world_size", "num_machines", "precision", "batch_size", "channels_last", "compile_mode",
              "communication", "loader_order", "data_source", "preset", "recipe", "model", "dataset"]
SWEEP_KEYS = ["device", "world_size", "model", "dataset", "data", "mode", "precision", "channels_last", "compile",
              "batch_size"]
# A configuration: everything in a run's identity (bench/suite/config.py hashes it into run_id) except its seed. The
# seeds of one configuration aggregate into one row. Like run_id it leaves the machine out: the device is kept
# beside it, so that the same configuration can be set against itself on other hardware.
CONFIG_KEYS = ["data_source", "dataset", "model", "preset", "recipe", "epochs", "batch_size", "global_batch_size",
               "world_size", "num_machines", "precision", "channels_last", "compile_mode", "communication", "lr",
               "stop_at_target", "eval_every", "target", "synthetic_size", "loader_order"]
ACCURACY_METRICS = ["test_acc", "test_top5_acc", "train_time_s"]
SPEED_METRICS = ["train_images_per_s", "eval_images_per_s", "epoch_time_s", "target_accuracy", "time_to_target_s",
                 "data_stall", "mfu", "peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "requeues", "requeue_lost_s"]
PREEMPTION = ["requeues", "requeue_lost_s"]  # shown when a run was requeued
RUN_COLUMNS = ["run_id", "status", "error", "model", "dataset", "data_source", "preset", "recipe", "seed", "precision",
               "device", "world_size", "num_machines", "batch_size", "global_batch_size", "epochs", "channels_last",
               "compile_mode", "communication", "lr", "stop_at_target", "eval_every", "target", "synthetic_size",
               "loader_order",
               "started_at", "history",
               "params", "train_gflops", "class_names", "test_per_class_acc", "test_confusion", "test_top_confusions",
               "to_study_s"]
SWEEP_COLUMNS = [*SWEEP_KEYS, "status", "images_per_s", "step_time_ms", "peak_mem_allocated_bytes",
                 "peak_mem_reserved_bytes", "mfu", "max_batch"]
ON_METRIC_SCALE = ("peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "mfu")  # a sweep point's, shown as its metric


def run_rows(records: list[RunRecord]) -> pd.DataFrame:
    """One flat row per run record: its setting, every declared run metric, and its model facts."""
    rows = []
    for record in records:
        config = record.config
        rows.append({
            "run_id": record.run_id, "status": record.status, "error": record.error,
            "model": record.model, "dataset": record.dataset, "data_source": record.data_source,
            "preset": record.preset, "recipe": record.recipe, "seed": record.seed,
            "precision": record.precision, "device": record.device,
            "world_size": record.world_size, "num_machines": record.num_machines,
            "batch_size": record.batch_size, "global_batch_size": record.global_batch_size,
            "epochs": config.get("epochs"), "channels_last": config.get("channels_last"),
            "compile_mode": config.get("compile_mode") or "off",
            "communication": Communication(**config.get("communication") or {}).words(),  # "" at DDP's defaults
            # Options older records lack, at the value they had before the option existed.
            "lr": config.get("lr"), "stop_at_target": config.get("stop_at_target") or False,
            "eval_every": config.get("eval_every"), "target": config.get("target_accuracy"),
            "synthetic_size": f"{config.get('synthetic_train')}+{config.get('synthetic_test')}"
            if record.data_source == "synthetic" else None,
            "loader_order": config.get("loader_order") or "random",
            "started_at": record.started_at, "history": record.history,
            "params": record.facts.get("params"), "train_gflops": record.facts.get("train_gflops"),
            "class_names": record.class_names, "test_per_class_acc": record.test_per_class_acc,
            "test_confusion": record.test_confusion, "to_study_s": seconds_to_study_accuracy(record),
            "test_top_confusions": record.test_top_confusions or (  # older records: from their matrix
                top_confusions(record.test_confusion) if record.test_confusion else None),
            **{key: record.metrics.get(key) for key in RUN_KEYS},
        })
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *RUN_KEYS])
    for key in RUN_KEYS:  # absent metrics arrive as None; numeric ones become NaN so that means skip them
        if BY_KEY[key].fmt:
            frame[key] = pd.to_numeric(frame[key], errors="coerce")
    return frame


def seconds_to_study_accuracy(record: RunRecord) -> float:
    """Training seconds until the run's validation accuracy first reached the study's test accuracy for its model and
    dataset (real data only), from its history: NaN when it never did or the study has no number."""
    study = study_result(record.model, record.dataset) if record.data_source == "real" else None
    seconds = time_to_target(record.history, study.test_acc_pct / 100).seconds if study else None
    return np.nan if seconds is None else seconds


def sorted_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Real data before synthetic, datasets and models in registry order (the study's first), then the rest."""
    order = {"data_source": ["real", "synthetic"], "dataset": list(dataset_names()), "model": list(model_names())}

    def sort_key(column: pd.Series) -> pd.Series:
        if column.name in order:
            known = order[column.name]
            return column.map(lambda value: (known.index(value), "") if value in known else (len(known), str(value)))
        return column if pd.api.types.is_numeric_dtype(column) else column.astype(str)

    return frame.sort_values(keys, key=sort_key, kind="stable").reset_index(drop=True)


def grouped(runs: pd.DataFrame, keys: list[str], metrics: list[str],
            facts: Callable[[pd.DataFrame], dict] | None = None) -> pd.DataFrame:
    """One row per configuration (`keys`): the number of runs, each metric aggregated over them, and
    whatever `facts` says of the group."""
    rows = [{**dict(zip(keys, values)), "n": len(group), **aggregate(group, metrics), **(facts(group) if facts else {})}
            for values, group in runs.groupby(keys, dropna=False, sort=False)]
    return pd.DataFrame(rows)


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "finished"]


def study_value(row: pd.Series, field: str) -> float:
    """The study's number for a real-data row; NaN on synthetic data and where the study has none."""
    result = study_result(row["model"], row["dataset"]) if row["data_source"] == "real" else None
    return getattr(result, field) if result else np.nan


def with_study(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with the study's accuracy, our difference from it, and its training seconds, per row."""
    return table.assign(study_acc=table.apply(study_value, axis=1, field="test_acc_pct", result_type="reduce"),
                        study_train_s=table.apply(study_value, axis=1, field="train_seconds", result_type="reduce"),
                        ).pipe(lambda frame: frame.assign(diff_pp=frame["test_acc"] - frame["study_acc"]))


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per setting x model x dataset: mean and sample std over seeds, next to the study's."""
    columns = [*ACCURACY_KEYS, "n", "test_acc", "test_acc_std", "study_acc", "diff_pp", "test_top5_acc",
               "test_top5_acc_std", "train_time_s", "study_train_s"]
    finished = finished_runs(runs)
    if finished.empty:
        return pd.DataFrame(columns=columns)
    return sorted_rows(with_study(grouped(finished, ACCURACY_KEYS, ACCURACY_METRICS)).reindex(columns=columns),
                       ACCURACY_KEYS)


def gains_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Each improved model's gain over its vanilla twin (under paper-vanilla when that ran, else under its own recipe),
    split into recipe and architecture parts when the twin also ran with the improved recipe (an ablation)."""
    rows = []
    for keys, group in accuracy.groupby(GAIN_KEYS, dropna=False, sort=False):
        means = {(model, recipe): value for model, recipe, value in
                 group[["model", "recipe", "test_acc"]].itertuples(index=False, name=None)}
        for (model, recipe), improved in means.items():
            twin = model_entry(model).improves if model in model_names() else None
            if twin is None:
                continue
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
            study = [study_result(name, setting["dataset"]) for name in (model, twin)]
            rows.append({
                **setting, "model": model, "vanilla": twin, "vanilla_recipe": base, "recipe": recipe,
                "vanilla_acc": vanilla, "improved_acc": improved, "gain_pp": improved - vanilla,
                "recipe_part_pp": recipe_part, "arch_part_pp": arch_part,
                "study_gain_pp": study[0].test_acc_pct - study[1].test_acc_pct
                if setting["data_source"] == "real" and all(study) else np.nan,
            })
    columns = ["data_source", "dataset", "model", "vanilla", "vanilla_recipe", "recipe", *GAIN_KEYS[2:],
               "vanilla_acc", "improved_acc", "gain_pp", "recipe_part_pp", "arch_part_pp", "study_gain_pp"]
    return sorted_rows(pd.DataFrame(rows, columns=columns), ["data_source", "dataset", "model"])


def speed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Throughput, time, MFU and memory of finished runs, device first so hardware never mixes."""
    finished = finished_runs(runs)
    if finished.empty:
        return pd.DataFrame(columns=[*SPEED_KEYS, "n"])
    table = grouped(finished, SPEED_KEYS, SPEED_METRICS, facts=lambda group: {
        "params_m": group["params"].iloc[0] / 1e6, "train_gflops_per_image": group["train_gflops"].iloc[0]})
    if not (pd.to_numeric(table["requeues"], errors="coerce") > 0).any():
        table = table.drop(columns=PREEMPTION)
    return sorted_rows(table, SPEED_KEYS)


def failures_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish, with the first line of their error."""
    failed = runs[runs["status"] != "finished"].copy()
    failed["error"] = [str(error).splitlines()[0] if error else "" for error in failed["error"]]
    columns = ["status", "model", "dataset", "data_source", "recipe", "device", "run_id", "error"]
    return sorted_rows(failed.reindex(columns=columns), ["status", "dataset", "model", "run_id"])


def sweep_table(sweeps: list[SweepRecord]) -> pd.DataFrame:
    """One row per speed-sweep point (bench/speed.py), memory and MFU on their metrics' scales."""
    rows = [{**{name: getattr(record, name, None) for name in SWEEP_COLUMNS},
             "dataset": record.dataset or f"{record.in_channels} channels",
             "max_batch": (record.max_batch or {}).get("limit")} for record in sweeps]
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    for name in ("images_per_s", "step_time_ms", *ON_METRIC_SCALE):
        table[name] = pd.to_numeric(table[name], errors="coerce")
    for name in ON_METRIC_SCALE:
        table[name] *= BY_KEY[name].scale
    return sorted_rows(table, SWEEP_KEYS)
