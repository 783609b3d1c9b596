"""Run and sweep records -> pandas tables: the headline, accuracy, vanilla-vs-improved gains, speed, failures,
sweeps, and each headline model's weakest classes.

Rows are grouped by everything that changes a result (data source, preset, recipe, precision, device,
...) so that settings are never silently merged. Metric columns, their scaling and their aggregation
over seeds come from bench/measuring/metrics.py; the study's columns from the model registry, for real data
only (synthetic runs test the harness, not the study's claims).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from bench.measuring.measure import time_to_target
from bench.measuring.metrics import BY_KEY, MIB, RUN_KEYS, aggregate, mlperf_time, shown
from bench.results.schema import RunRecord, SweepRecord
from bench.suite.config import Communication
from bench.suite.recipes import paired_recipe
from data.datasets import dataset_names
from models import model_entry, model_names, study_result

# What makes two runs comparable for accuracy; the speed table splits further (see SPEED_KEYS).
ACCURACY_KEYS = ["data_source", "dataset", "model", "recipe", "preset", "epochs", "global batch", "precision", "device"]
GAIN_KEYS = ["data_source", "dataset", "preset", "epochs", "global batch", "precision", "device"]
SPEED_KEYS = ["device", "world size", "machines", "precision", "batch", "channels_last", "compile", "communication",
              "data_source", "preset", "recipe", "model", "dataset"]
SWEEP_KEYS = ["device", "world size", "model", "dataset", "input", "mode", "precision", "channels_last", "compile",
              "batch"]
# A configuration: everything in a run's identity (bench/suite/config.py hashes it into run_id) except its seed. The
# seeds of one configuration aggregate into one row. Like run_id it leaves the machine out: the device is kept
# beside it, so that the same configuration can be set against itself on other hardware.
CONFIG_KEYS = ["data_source", "dataset", "model", "preset", "recipe", "epochs", "batch", "global batch", "world size",
               "machines", "precision", "channels_last", "compile", "communication", "lr", "stop_at_target",
               "eval_every", "target_accuracy", "synthetic size"]
# One headline table per dataset, data source, device and preset; in it one row per model.
HEADLINE_GROUP = ["data_source", "dataset", "device", "preset"]
# The headline's columns, left to right: adding one is one line here. A record field declared in bench/measuring/metrics.py
# is aggregated over seeds and shown under its label (format and meaning from there); any other name is derived in
# headline_table (its format and meaning in DERIVED below).
HEADLINE_COLUMNS = (
    "model",
    "n",
    "test_acc",
    "study %",
    "diff pp",
    "train_time_s",
    "study train s",
    "speed-up x",
    "time_to_target_s",
    "train_images_per_s",
    "infer_p50_ms",
    "peak mem GiB",
)
# Measurements the derived columns are computed from, aggregated whether shown or not.
HEADLINE_INPUTS = ("test_acc", "train_time_s", "time_to_target_s", "peak_mem_allocated_bytes")
HEADLINE_METRICS = list(dict.fromkeys([*HEADLINE_INPUTS, *(name for name in HEADLINE_COLUMNS if name in BY_KEY)]))
HEADLINE_SHOWN = [BY_KEY[name].label if name in BY_KEY else name for name in HEADLINE_COLUMNS]
ACCURACY_METRICS = ["test_acc", "train_time_s"]
SPEED_METRICS = ["train_images_per_s", "eval_images_per_s", "epoch_time_s", "target_accuracy", "time_to_target_s",
                 "data_stall", "mfu", "peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "requeues", "requeue_lost_s"]
PREEMPTION_LABELS = [BY_KEY["requeues"].label, BY_KEY["requeue_lost_s"].label]  # shown when a run was requeued
RUN_COLUMNS = ["run_id", "status", "error", "model", "dataset", "data_source", "preset", "recipe", "seed", "precision",
               "device", "world size", "machines", "batch", "global batch", "epochs", "channels_last", "compile",
               "communication", "lr",
               "stop_at_target", "eval_every", "synthetic size", "started_at", "history", "params", "train_gflops",
               "class_names", "per_class_acc", "confusion", "to study s"]
WEAKEST = 3  # classes listed per model in the weakest-classes table
PRECISION_NAMES = {"no": "fp32"}  # Accelerate's "no" mixed precision, as people say it

# Columns the report derives rather than measures: their formats and meanings.
DERIVED = {
    "n": (",.0f", "Runs (seeds) behind the row."),
    "study %": (".2f", "The study's test accuracy (docs/STUDY.md: one Colab GPU, 50 epochs), real data only."),
    "diff pp": ("+.2f", "Ours minus the study's, in percentage points, each after its own epochs (ours: the "
                "caption's; the study's: 50)."),
    "study train s": (",.0f", "The study's training seconds (indicative only: its GPU was not recorded)."),
    "vanilla %": (".2f", "Test accuracy of the vanilla twin."),
    "improved %": (".2f", "Test accuracy of the improved model."),
    "gain pp": ("+.2f", "Improved minus vanilla, percentage points."),
    "recipe part pp": ("+.2f", "The part of the gain the recipe brings (needs the ablation run)."),
    "arch part pp": ("+.2f", "The part of the gain the architecture brings."),
    "study gain pp": ("+.2f", "The same gain in the study."),
    "reached": ("", "Runs that reached the target, of all runs of the configuration."),
    "params M": (".2f", "Parameters, millions."),
    "train GFLOPs/img": (".3f", "Training (forward + backward) GFLOPs per image, counted by FlopCounterMode."),
    "img/s": (",.0f", "Images per second (median of the timed windows), summed over processes."),
    "step ms": (",.2f", "Milliseconds per step (median of the timed windows)."),
    "max batch": ("", "Set where `bench.speed --find-max-batch` found this batch the largest that trains, beside its "
                  "peak memory: what stopped the search beyond it (`oom`: the next batch ran out of memory; `cap`: "
                  "--batch-cap; `memory (predicted)`: on a CPU, the next batch's predicted peak exceeded the memory "
                  "budget, since the OOM killer raises no error)."),
    "configs": (",.0f", "Configurations this model has in the table's group; the row shows the one of its most "
                "recent run."),
    "to study s": (",.1f", "Training seconds (evaluation excluded) until validation accuracy first reached the "
                   "study's test accuracy, whatever the run's own target; over seeds MLPerf's rule, NaN where no "
                   "run got there."),
    "study reached": ("", "Runs that reached the study's accuracy, of all runs of the configuration."),
    "speed-up x": (",.2f", "The study's training seconds over ours to the study's accuracy (`to study s`: "
                   "training seconds until validation accuracy first reached the study's test accuracy, MLPerf's "
                   "rule over seeds), so that like is compared with like; `not reached (0/n)` when no run got "
                   "there, whatever its epochs. Above 1: sooner than the study's Colab GPU (indicative only: its "
                   "GPU was not recorded)."),
    "peak mem GiB": (",.2f", "Peak allocated memory per process (max over processes and seeds) in GiB; on a CPU the "
                     "process's peak RSS."),
    # The comparison with a baseline (bench/reporting/compare.py).
    "configuration": ("", "The configuration compared, in words (with model and dataset: everything in a run's "
                      "identity but its seed and machine)."),
    "baseline device": ("", "The device of the baseline's runs."),
    "baseline n": (",.0f", "Runs (seeds) behind the baseline's numbers."),
    "acc diff pp": ("+.2f", "Test accuracy minus the baseline's (each a mean over seeds), percentage points."),
    "img/s change %": ("+.1f", "Training images/s relative to the baseline's, percent."),
    "noise %": (".1f", "The throughput drop that noise can explain for this configuration: a fixed floor, or twice the "
                "combined coefficient of variation of both sides' per-evaluation train img/s when larger (the rule "
                "and why it is chosen: the comparison's introduction)."),
    "peak mem change %": ("+.1f", "Peak allocated memory relative to the baseline's, percent."),
    "to target change %": ("+.1f", "Time to target relative to the baseline's, percent (blank unless both sides "
                           "have one)."),
    "regression": ("", "`slower` where throughput fell by more than the noise."),
    **{f"weakest {rank} %": (".1f", f"Test accuracy of the model's weakest class number {rank} (lowest first), mean "
                             "over the seeds of its headline configuration.") for rank in range(1, WEAKEST + 1)},
}


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
            "world size": record.world_size, "machines": record.num_machines,
            "batch": record.batch_size, "global batch": record.global_batch_size, "epochs": config.get("epochs"),
            "channels_last": config.get("channels_last"), "compile": config.get("compile_mode") or "off",
            "communication": Communication(**config.get("communication") or {}).words(),  # "" at DDP's defaults
            # Options older records lack, at the value they had before the option existed.
            "lr": config.get("lr"), "stop_at_target": config.get("stop_at_target") or False,
            "eval_every": config.get("eval_every"),
            "synthetic size": f"{config.get('synthetic_train')}+{config.get('synthetic_test')}"
            if record.data_source == "synthetic" else None,
            "started_at": record.started_at, "history": record.history,
            "params": record.facts.get("params"), "train_gflops": record.facts.get("train_gflops"),
            "class_names": record.class_names, "per_class_acc": record.test_per_class_acc,
            "confusion": record.test_confusion, "to study s": seconds_to_study_accuracy(record),
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


def study_value(row: pd.Series, field: str) -> float:
    """The study's number for a real-data row; NaN on synthetic data and where the study has none."""
    result = study_result(row["model"], row["dataset"]) if row["data_source"] == "real" else None
    return getattr(result, field) if result else np.nan


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per setting x model x dataset: mean and sample std over seeds, next to the study's."""
    acc, seconds = BY_KEY["test_acc"].label, BY_KEY["train_time_s"].label
    columns = [*ACCURACY_KEYS, "n", acc, f"{acc} std", "study %", "diff pp", seconds, "study train s"]
    finished = runs[runs["status"] == "finished"]
    if finished.empty:
        return pd.DataFrame(columns=columns)
    table = grouped(finished, ACCURACY_KEYS, ACCURACY_METRICS)
    table["study %"] = table.apply(study_value, axis=1, field="test_acc_pct", result_type="reduce")
    table["diff pp"] = table[acc] - table["study %"]
    table["study train s"] = table.apply(study_value, axis=1, field="train_seconds", result_type="reduce")
    return sorted_rows(table.reindex(columns=columns), ACCURACY_KEYS)


def gains_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Each improved model's gain over its vanilla twin, split into recipe and architecture parts.

    The baseline is the twin under its paired (paper-vanilla) recipe when that was run, else under the
    improved model's own recipe (then the whole gain is architecture). When the twin was also trained
    with the improved model's recipe (an ablation), recipe part = twin(improved recipe) - twin(baseline)
    and architecture part = improved - twin(improved recipe); the two add up to the gain.
    """
    acc = BY_KEY["test_acc"].label
    rows = []
    for keys, group in accuracy.groupby(GAIN_KEYS, dropna=False, sort=False):
        means = {(model, recipe): value for model, recipe, value in
                 group[["model", "recipe", acc]].itertuples(index=False, name=None)}
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
                **setting, "model": model, "vanilla": twin, "vanilla recipe": base, "recipe": recipe,
                "vanilla %": vanilla, "improved %": improved, "gain pp": improved - vanilla,
                "recipe part pp": recipe_part, "arch part pp": arch_part,
                "study gain pp": study[0].test_acc_pct - study[1].test_acc_pct
                if setting["data_source"] == "real" and all(study) else np.nan,
            })
    columns = ["data_source", "dataset", "model", "vanilla", "vanilla recipe", "recipe", *GAIN_KEYS[2:],
               "vanilla %", "improved %", "gain pp", "recipe part pp", "arch part pp", "study gain pp"]
    return sorted_rows(pd.DataFrame(rows, columns=columns), ["data_source", "dataset", "model"])


def speed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Throughput, time, MFU and memory of finished runs, device first so hardware never mixes."""
    finished = runs[runs["status"] == "finished"]
    if finished.empty:
        return pd.DataFrame(columns=[*SPEED_KEYS, "n"])
    table = grouped(finished, SPEED_KEYS, SPEED_METRICS, facts=lambda group: {
        "params M": group["params"].iloc[0] / 1e6, "train GFLOPs/img": group["train_gflops"].iloc[0]})
    if not (pd.to_numeric(table[PREEMPTION_LABELS[0]], errors="coerce") > 0).any():
        table = table.drop(columns=PREEMPTION_LABELS)
    return sorted_rows(table, SPEED_KEYS)


def failures_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish, with the first line of their error."""
    failed = runs[runs["status"] != "finished"].copy()
    failed["error"] = [str(error).splitlines()[0] if error else "" for error in failed["error"]]
    columns = ["status", "model", "dataset", "data_source", "recipe", "device", "run_id", "error"]
    return sorted_rows(failed.reindex(columns=columns), ["status", "dataset", "model", "run_id"])


def sweep_table(sweeps: list[SweepRecord]) -> pd.DataFrame:
    """One row per speed-sweep point (bench/speed.py)."""
    memory, reserved, mfu = (BY_KEY[key] for key in ("peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "mfu"))
    rows = [{
        "device": record.device, "world size": record.world_size, "model": record.model,
        "dataset": record.dataset or f"{record.in_channels} channels", "input": record.data,
        "mode": record.mode, "precision": record.precision, "channels_last": record.channels_last,
        "compile": record.compile, "batch": record.batch_size, "status": record.status,
        "img/s": record.images_per_s, "step ms": record.step_time_ms,
        memory.label: record.peak_mem_allocated_bytes, reserved.label: record.peak_mem_reserved_bytes,
        mfu.label: record.mfu, "max batch": (record.max_batch or {}).get("limit"),
    } for record in sweeps]
    table = pd.DataFrame(rows, columns=[*SWEEP_KEYS, "status", "img/s", "step ms", memory.label, reserved.label,
                                        mfu.label, "max batch"])
    for column in ("img/s", "step ms", memory.label, reserved.label, mfu.label):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    for metric in (memory, reserved, mfu):
        table[metric.label] *= metric.scale
    return sorted_rows(table, SWEEP_KEYS)


def config_label(row: pd.Series) -> str:
    """A configuration in words, from the keys that the headline's grouping and row leave open; settings at their
    default (channels_last off, compile off, no lr override, the study's accuracy as target, ...) are not named."""
    epochs, world = row["epochs"], row["world size"]
    parts = [f"recipe {row['recipe']}", f"{epochs:g} epoch{'' if epochs == 1 else 's'}" if pd.notna(epochs) else None,
             f"batch {row['batch']} x {world} process{'' if world == 1 else 'es'}"
             + (f" on {row['machines']} machines" if row.get("machines", 1) > 1 else ""),
             f"precision {PRECISION_NAMES.get(row['precision'], row['precision'])}",
             "channels_last" if row["channels_last"] else None,
             f"compile {row['compile']}" if row["compile"] != "off" else None, row.get("communication") or None]
    optional = {"lr": "lr {:g}", "eval_every": "validation every {:g} steps", "synthetic size": "{} synthetic images",
                "target_accuracy": "target {:.2%}"}
    study_target = study_value(row, "test_acc_pct") / 100
    parts += [text.format(row[key]) for key, text in optional.items()
              if pd.notna(row[key]) and not (key == "target_accuracy" and np.isclose(row[key], study_target))]
    return ", ".join([part for part in parts if part] + (["stop at target"] if row["stop_at_target"] else []))


def with_gib(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its peak allocated memory (aggregated, in MiB) also in GiB: the headline's and the plots' unit."""
    return table.assign(**{"peak mem GiB": table[BY_KEY["peak_mem_allocated_bytes"].label] * MIB / 2**30})


def headline_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs behind the headline: per group and model, every seed of the configuration of the model's
    most recent run (by started_at, time zones respected), with `configs` = the model's configurations there."""
    finished = runs[runs["status"] == "finished"]
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
    seconds, _, reached, runs = mlperf_time(group["to study s"])
    return {"to study s": seconds, "study reached": f"{reached}/{runs}"}


def headline_table(chosen: pd.DataFrame) -> pd.DataFrame:
    """One row per group and model from `headline_runs`: its configuration, the headline metrics over its seeds,
    and the study's numbers beside them (real data only). The speed-up compares like with like: the study's
    training seconds over ours to the study's accuracy, none for a configuration that did not get there."""
    keys = list(dict.fromkeys([*HEADLINE_GROUP, "model", *CONFIG_KEYS, "configs"]))
    acc, seconds = BY_KEY["test_acc"].label, BY_KEY["train_time_s"].label
    aggregated = [label for name in HEADLINE_METRICS for label in
                  (BY_KEY[name].label, *([f"{BY_KEY[name].label} std"] if BY_KEY[name].spread else []))]
    derived = ["study %", "diff pp", "study train s", "to study s", "study reached", "speed-up x", "reached",
               "peak mem GiB"]
    columns = [*keys, "n", *dict.fromkeys([*aggregated, *derived])]
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    table = grouped(chosen, keys, HEADLINE_METRICS, facts=study_speed)
    table["study %"] = table.apply(study_value, axis=1, field="test_acc_pct", result_type="reduce")
    table["diff pp"] = table[acc] - table["study %"]
    table["study train s"] = table.apply(study_value, axis=1, field="train_seconds", result_type="reduce")
    table["speed-up x"] = table["study train s"] / table["to study s"]
    table["study reached"] = table["study reached"].where(table["study train s"].notna(), None)
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
    to_target = BY_KEY["time_to_target_s"]
    view = rows[HEADLINE_SHOWN].copy()
    view[to_target.label] = [with_reached(time, reached, to_target.fmt)
                             for time, reached in zip(rows[to_target.label], rows["reached"])]
    view["speed-up x"] = [with_reached(ratio, reached, DERIVED["speed-up x"][0])
                          for ratio, reached in zip(rows["speed-up x"], rows["study reached"])]
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


def weakest_classes(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per group and model of the headline, its WEAKEST lowest per-class test accuracies, each the mean over the
    seeds of its headline configuration. Classes the test split never showed (a row of zeros in the confusion
    matrix) are no weakness and are left out, as are records without per-class results."""
    acc = BY_KEY["test_acc"]
    columns = [*HEADLINE_GROUP, "model", *(f"weakest {rank}{unit}" for rank in range(1, WEAKEST + 1)
                                          for unit in ("", " %"))]
    rows = []
    for keys, group in chosen.groupby([*HEADLINE_GROUP, "model"], dropna=False, sort=False):
        per_class = [np.where(np.sum(confusion, axis=1) > 0, values, np.nan) if confusion else np.asarray(values)
                     for values, confusion in zip(group["per_class_acc"], group["confusion"]) if values]
        if not per_class:
            continue
        mean = pd.DataFrame(per_class).mean()  # per class over seeds; NaN where no seed saw the class
        names = next((names for names in group["class_names"] if names), None) or [str(i) for i in mean.index]
        row = dict(zip([*HEADLINE_GROUP, "model"], keys))
        for rank, (index, value) in enumerate(mean.dropna().sort_values(kind="stable").head(WEAKEST).items(), start=1):
            row[f"weakest {rank}"], row[f"weakest {rank} %"] = names[index], shown(acc, value)
        rows.append(row)
    return sorted_rows(pd.DataFrame(rows, columns=columns), [*HEADLINE_GROUP, "model"])
