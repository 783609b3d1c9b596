"""Every report column in one place. Inside the code a column is named as its record field, metric key or derived
quantity (`world_size`, `test_acc`, `speed_up`); users see its label (`world size`, `test acc %`, `speed-up x`) in
every table, CSV header and glossary, with its number format and meaning from here (measurements from their
declarations in bench/measuring/metrics.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from bench.measuring.metrics import BY_KEY

WEAKEST = 3  # classes listed per model in the weakest-classes table
BASELINE = "baseline_"  # the comparison's baseline side of a column: `baseline_device` is shown as `baseline device`
SPREAD = "_std"  # a metric's sample standard deviation over seeds: `test_acc_std` is shown as `test acc % std`


@dataclass(frozen=True)
class Column:
    label: str
    fmt: str = ""  # markdown number format of its values ("": as they are)
    meaning: str = ""  # what the glossary says of it ("": nothing)


# The settings that group and name rows: run and sweep record fields, as the report has always headed them.
SETTINGS: dict[str, Column] = {name: Column(label) for name, label in {
    "run_id": "run_id", "status": "status", "error": "error", "model": "model", "dataset": "dataset",
    "data_source": "data_source", "preset": "preset", "recipe": "recipe", "seed": "seed", "precision": "precision",
    "device": "device", "world_size": "world size", "num_machines": "machines", "batch_size": "batch",
    "global_batch_size": "global batch", "epochs": "epochs", "channels_last": "channels_last",
    "compile_mode": "compile", "compile": "compile", "communication": "communication",
    "stop_at_target": "stop_at_target", "eval_every": "eval_every",
    # The configuration's target, where it groups rows; aggregated over seeds it is the metric `target_accuracy`
    # ("target %"). Both headers stay as users have parsed them.
    "target": "target_accuracy", "lr": "lr", "loader_order": "loader order",
    "synthetic_size": "synthetic size", "mode": "mode", "data": "input", "vanilla": "vanilla",
    "vanilla_recipe": "vanilla recipe", "axis": "axis", "link": "link", "levers": "levers",
}.items()}

# Columns the report derives rather than measures.
DERIVED: dict[str, Column] = {
    "n": Column("n", ",.0f", "Runs (seeds) behind the row."),
    "study_acc": Column("study %", ".2f", "The study's test accuracy (docs/STUDY.md: one Colab GPU, 50 epochs), real "
                        "data only."),
    "diff_pp": Column("diff pp", "+.2f", "Ours minus the study's, in percentage points, each after its own epochs "
                      "(ours: the caption's; the study's: 50)."),
    "study_train_s": Column("study train s", ",.0f", "The study's training seconds (indicative only: its GPU was not "
                            "recorded)."),
    "vanilla_acc": Column("vanilla %", ".2f", "Test accuracy of the vanilla twin."),
    "improved_acc": Column("improved %", ".2f", "Test accuracy of the improved model."),
    "gain_pp": Column("gain pp", "+.2f", "Improved minus vanilla, percentage points."),
    "recipe_part_pp": Column("recipe part pp", "+.2f", "The part of the gain the recipe brings (needs the ablation "
                             "run)."),
    "arch_part_pp": Column("arch part pp", "+.2f", "The part of the gain the architecture brings."),
    "study_gain_pp": Column("study gain pp", "+.2f", "The same gain in the study."),
    "reached": Column("reached", "", "Runs that reached the target, of all runs of the configuration."),
    "params_m": Column("params M", ".2f", "Parameters, millions."),
    "train_gflops_per_image": Column("train GFLOPs/img", ".3f", "Training (forward + backward) GFLOPs per image, "
                                     "counted by FlopCounterMode."),
    "images_per_s": Column("img/s", ",.0f", "Images per second (median of the timed windows), summed over "
                           "processes."),
    "step_time_ms": Column("step ms", ",.2f", "Milliseconds per step (median of the timed windows)."),
    "best_eager_images_per_s": Column("best eager img/s", ",.0f", "The model's best eager sweep point."),
    "best_compiled_images_per_s": Column("best compiled img/s", ",.0f", "The model's best compiled sweep point."),
    "max_batch": Column("max batch", "", "Set where `bench.speed --find-max-batch` found this batch the largest that "
                        "trains, beside its peak memory: what stopped the search beyond it (`oom`: the next batch ran "
                        "out of memory; `cap`: --batch-cap; `memory (predicted)`: on a CPU, the next batch's predicted "
                        "peak exceeded the memory budget, since the OOM killer raises no error)."),
    "configs": Column("configs", ",.0f", "Configurations this model has in the table's group; the row shows the one "
                      "of its most recent run."),
    "to_study_s": Column("to study s", ",.1f", "Training seconds (evaluation excluded) until validation accuracy "
                         "first reached the study's test accuracy, whatever the run's own target; over seeds MLPerf's "
                         "rule, NaN where no run got there."),
    "study_reached": Column("study reached", "", "Runs that reached the study's accuracy, of all runs of the "
                            "configuration."),
    "speed_up": Column("speed-up x", ",.2f", "The study's training seconds over ours to the study's accuracy (`to "
                       "study s`: training seconds until validation accuracy first reached the study's test accuracy, "
                       "MLPerf's rule over seeds), so that like is compared with like; `not reached (0/n)` when no run "
                       "got there, whatever its epochs. Above 1: sooner than the study's Colab GPU (indicative only: "
                       "its GPU was not recorded)."),
    "peak_mem_gib": Column("peak mem GiB", ",.2f", "Peak allocated memory per process (max over processes and seeds) "
                           "in GiB; on a CPU the process's peak RSS."),
    # The comparison with a baseline.
    "configuration": Column("configuration", "", "The configuration compared, in words (with model and dataset: "
                            "everything in a run's identity but its seed and machine)."),
    "acc_diff_pp": Column("acc diff pp", "+.2f", "Test accuracy minus the baseline's (each a mean over seeds), "
                          "percentage points."),
    "images_per_s_change_pct": Column("img/s change %", "+.1f", "Training images/s relative to the baseline's, "
                                      "percent."),
    "noise_pct": Column("noise %", ".1f", "The throughput drop that noise can explain for this configuration: a fixed "
                        "floor, or twice the combined coefficient of variation of both sides' per-evaluation train "
                        "img/s when larger (the rule and why it is chosen: the comparison's introduction)."),
    "peak_mem_change_pct": Column("peak mem change %", "+.1f", "Peak allocated memory relative to the baseline's, "
                                  "percent."),
    "to_target_change_pct": Column("to target change %", "+.1f", "Time to target relative to the baseline's, percent "
                                   "(blank unless both sides have one)."),
    "regression": Column("regression", "", "`slower` where throughput fell by more than the noise."),
    **{f"weakest_{rank}": Column(f"weakest {rank}") for rank in range(1, WEAKEST + 1)},
    **{f"weakest_{rank}_acc": Column(f"weakest {rank} %", ".1f", f"Test accuracy of the model's weakest class number "
                                     f"{rank} (lowest first), mean over the seeds of its headline configuration.")
       for rank in range(1, WEAKEST + 1)},
    # How a configuration scales (bench/reporting/scaling.py).
    "series": Column("series", "", "The series of the row (its heading in REPORT.md says which)."),
    "size": Column("size", "", "The point's place along its series: processes, or machines."),
    "images_per_s_per_process": Column("img/s per process", ",.0f", "`train img/s` over the processes."),
    "scaling_speed_up": Column("speed-up x", ",.2f", "Train img/s over that of the series' smallest finished point."),
    "efficiency": Column("efficiency %", ",.0f", "Speed-up over the ideal (the size over the smallest point's), in "
                         "percent: 100 is perfect scaling."),
    "loader_threads": Column("loader threads", "", "FFCV loader threads per process (--num-workers): at 64x64 with "
                             "few cores per GPU the input pipeline, not the link, may be the limit."),
    "ttt_speed_up": Column("to-target speed-up x", ",.2f", "Training seconds to the target of the smallest point over "
                           "this point's: what more processes buy in time to accuracy, beside what they buy in "
                           "throughput."),
    "bound": Column("bound", "", "What limits the point beyond the measured spread: `communication` where exposed "
                    "communication less twice its spread exceeds 10 % of the synced step, `input` where the data stall "
                    "exceeds 10 %, `compute` where communication with its spread stays below it, else `unclear`."),
    "note": Column("note", "", "Why a point has no measurements (unsupported, failed, out of memory: the record's "
                   "error)."),
    **{f"confusion_{rank}": Column(f"confusion {rank}", "", f"The model's confusion number {rank} (most frequent "
                                   "first): true class -> predicted class (test images so confused / test images of the "
                                   "true class), summed over the seeds of its headline configuration.")
       for rank in range(1, WEAKEST + 1)},
}
# The baseline's side of a comparison: its meanings are the columns' own (not repeated in the glossary).
BASELINE_MEANINGS = {"device": "The device of the baseline's runs.", "n": "Runs (seeds) behind the baseline's numbers."}


def column(name: str) -> Column:
    """The label, format and meaning of the column `name` (a name nobody declared is its own label)."""
    if name in SETTINGS:
        return SETTINGS[name]
    if name in DERIVED:
        return DERIVED[name]
    if name in BY_KEY:
        metric = BY_KEY[name]
        return Column(metric.label, metric.fmt, metric.explanation)
    if name.endswith(SPREAD) and name.removesuffix(SPREAD) in BY_KEY:
        return Column(f"{BY_KEY[name.removesuffix(SPREAD)].label} std", BY_KEY[name.removesuffix(SPREAD)].fmt)
    if name.startswith(BASELINE):
        own = column(name.removeprefix(BASELINE))
        return Column(f"baseline {own.label}", own.fmt, BASELINE_MEANINGS.get(name.removeprefix(BASELINE), ""))
    return Column(name)


def label(name: str) -> str:
    return column(name).label


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its columns headed as users see them."""
    return frame.rename(columns=label)


def glossary(names: Iterable[str]) -> list[str]:
    """Markdown bullet lines saying what the measured, then the derived columns among `names` mean."""
    explained = [name for name in names if column(name).meaning]
    measured = [name for name in explained if name in BY_KEY]
    others = [name for name in explained if name not in BY_KEY]
    return [f"- `{label(name)}`: {column(name).meaning}" for name in [*measured, *others]]
