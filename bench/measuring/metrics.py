"""Every measurement, declared once: its record field, report label, format, meaning and aggregation over seeds.

History rows and run metrics accept exactly the fields declared here; the report, its glossary and
docs/measurements.md take everything else from the same entries (the aggregation rules: docs/design.md).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

MLPERF_MIN_RUNS = 5  # from this many runs on, drop the fastest and the slowest (MLPerf Training's rule)
TOP5_MIN_CLASSES = 100  # datasets with this many classes or more are also scored by top-5 accuracy
MIB = 2**20


@dataclass(frozen=True)
class Metric:
    key: str  # field in a history row or in a record's `metrics`
    label: str  # report column
    explanation: str
    scale: float = 1.0  # shown value = recorded value x scale
    fmt: str = ",.2f"  # markdown number format of the shown value
    aggregate: str = "mean"  # over seeds: "mean", "max", "sum", "first", "time", "count"
    spread: bool = False  # also show the sample standard deviation over seeds
    per_epoch: bool = False  # a column of the history rows
    per_run: bool = True  # a field of the run's metrics


METRICS: tuple[Metric, ...] = (
    # -- accuracy and loss
    Metric("epoch", "epoch", "Epochs completed when the row was taken (fractional with --eval-every).",
           fmt=".2f", per_epoch=True, per_run=False),
    Metric("step", "step", "Training steps completed when the row was taken.", fmt=",.0f", per_epoch=True,
           per_run=False),
    Metric("train_images", "train images", "Training images (all processes) since the previous row: every step "
           "between two rows is in the next one, across epoch ends and resumes.", fmt=",.0f", per_epoch=True,
           per_run=False),
    Metric("train_loss", "train loss", "Training loss on the augmented batches since the previous row "
           "(the last row's for a run); includes label smoothing.", fmt=".4f", per_epoch=True),
    Metric("train_acc", "train acc %", "Accuracy on the augmented training batches since the previous row.",
           scale=100, per_epoch=True),
    Metric("val_loss", "val loss", "Plain cross-entropy on the validation split.", fmt=".4f", per_epoch=True),
    Metric("val_acc", "val acc %", "Validation accuracy, every image counted once across processes.", scale=100,
           per_epoch=True),
    Metric("best_val_acc", "best val %", "The highest validation accuracy of the run.", scale=100),
    Metric("best_val_epoch", "best epoch", "Epoch of the highest validation accuracy.", fmt=".2f"),
    Metric("test_loss", "test loss", "Plain cross-entropy on the test split, after training.", fmt=".4f"),
    Metric("test_acc", "test acc %", "Test accuracy after the last epoch (or after stopping at the target), every "
           "test image counted once across processes; mean over seeds, `std` their sample standard deviation.",
           scale=100, spread=True),
    Metric("test_top5_acc", "test top-5 %", f"Share of the test images whose class is among the model's five highest "
           f"scores, every test image counted once across processes; for datasets of {TOP5_MIN_CLASSES} classes or more "
           "(blank for fewer, and in records from before it was measured).", scale=100, spread=True),
    Metric("epochs_completed", "epochs run", "Epochs trained (fewer, and fractional, when --stop-at-target "
           "stopped the run early).", fmt=".2f"),
    # -- time to accuracy
    Metric("target_accuracy", "target %", "Validation accuracy the run aims for (the study's test accuracy for "
           "that model and dataset unless --target-accuracy; none on synthetic data).", scale=100, aggregate="first"),
    Metric("reached_target", "reached target", "Whether validation accuracy reached the target; over seeds, in how "
           "many of how many runs.", fmt="", aggregate="count"),
    Metric("time_to_target_s", "to target s", "Training seconds (evaluation excluded) until validation accuracy "
           "first reached the target. Over seeds: MLPerf's rule (see `reached`).", fmt=",.1f", aggregate="time",
           spread=True),
    Metric("time_to_target_wall_s", "to target wall s", "Wall-clock seconds from the run's first touch of the "
           "data (data preparation, model build and every validation included, as MLPerf counts) until validation "
           "accuracy first reached the target. A preempted run counts its sessions' seconds, not the gaps between them "
           "(queueing, restart: `requeue lost s`).", fmt=",.1f", aggregate="time"),
    Metric("epochs_to_target", "epochs to target", "Epochs until validation accuracy first reached the target.",
           fmt=".2f"),
    # -- speed
    Metric("train_images_per_s", "train img/s", "Training images per second in the timed window (after "
           "--warmup-steps, device synchronised at both ends, evaluation excluded), summed over processes.",
           fmt=",.0f", per_epoch=True),
    Metric("train_images_per_s_per_process", "img/s per process", "The same, per process.", fmt="",
           per_epoch=True, per_run=False),
    Metric("eval_images_per_s", "eval img/s", "Evaluation images per second (the first, warm-up pass excluded).",
           fmt=",.0f", per_epoch=True),
    Metric("train_time_s", "train s", "Wall time of the training passes (every step, evaluation excluded); "
           "a row's value covers the steps since the previous row.", fmt=",.1f", per_epoch=True),
    Metric("eval_time_s", "eval s", "Wall time of all evaluation passes.", fmt=",.1f", per_epoch=True),
    Metric("elapsed_s", "elapsed s", "Wall-clock seconds since the run's first touch of the data when the row was "
           "taken (across resumes).", fmt=",.1f", per_epoch=True, per_run=False),
    Metric("epoch_time_s", "epoch s", "Training seconds per epoch.", fmt=",.2f"),
    Metric("wall_time_s", "wall s", "The whole run, set-up and evaluation included (summed across resumes; the gaps "
           "between sessions are `requeue lost s`).", fmt=",.1f"),
    Metric("requeues", "requeues", "Times the run stopped on a signal (SIGUSR1: SLURM's warning before a time limit "
           "or preemption, then requeued; SIGTERM) and went on with --resume from the step where it stopped "
           "(bench/suite/preemption.py). Over seeds: the sum.", fmt=",.0f", aggregate="sum"),
    Metric("requeue_lost_s", "requeue lost s", "Wall seconds from each such signal to the first training step after "
           "its resume (saving, exiting, waiting in the queue, starting again), summed; outside training time and "
           "wall time alike.", fmt=",.1f"),
    Metric("checkpoint_s", "checkpoint s", "Wall time spent writing resumable checkpoints (--checkpoint-minutes).",
           fmt=",.1f"),
    Metric("data_stall", "data stall %", "Share of the timed window spent waiting for the next batch: on a GPU the "
           "device's idle time for want of one (CUDA events around the loader), so a host held back by a busy GPU "
           "does not count; on a CPU the host's wait.", scale=100, fmt=".1f", per_epoch=True),
    Metric("achieved_tflops", "TFLOP/s", "Training FLOP/s achieved: training GFLOPs per image x images/s.",
           fmt=",.2f"),
    Metric("peak_tflops", "peak TFLOP/s", "The devices' dense peak for this precision, summed over processes: "
           "the vendor's datasheet for known GPUs (bench/measuring/device.py GPU_PEAKS names each), a large matmul timed on "
           "the device for other GPUs; blank on a CPU, which has no peak to trust (a measured rate on a shared "
           "machine is no upper bound).", fmt=",.1f", aggregate="first"),
    Metric("peak_tflops_source", "peak source", "Where the peak comes from.", fmt="", aggregate="first"),
    Metric("mfu", "MFU %", "Model FLOPs utilisation: achieved over peak FLOP/s; GPUs only (blank on a CPU: no "
           "trustworthy peak, see `peak TFLOP/s`).", scale=100, fmt=".2f"),
    Metric("peak_mem_allocated_bytes", "peak alloc MiB", "Peak allocated device memory per process (max over "
           "processes and seeds) from the opening of the timed window (after warm-up: compilation and cuDNN "
           "autotuning excluded) to the end of the run, evaluation included (its last batch padded to the training "
           "batch, so no new shape is autotuned there); on a CPU the process's peak RSS.",
           scale=1 / MIB, fmt=",.0f", aggregate="max"),
    Metric("peak_mem_reserved_bytes", "peak reserved MiB", "Peak memory reserved by the caching allocator, "
           "same window.", scale=1 / MIB, fmt=",.0f", aggregate="max"),
    # -- communication between processes: a probe after the run, blank for one process
    Metric("comm_step_ms", "synced step ms", "Milliseconds of a training step with DDP's gradient synchronisation in "
           "the probe after the run (the run's model, batch and communication settings on device-resident inputs; "
           "the slowest process; median over repeats).", fmt=",.1f"),
    Metric("compute_step_ms", "no-sync step ms", "The same steps under DDP's no_sync (gradients kept local): the "
           "step's compute.", fmt=",.1f"),
    Metric("exposed_comm_ms", "exposed comm ms", "Synced minus no-sync step, per repeat, median over repeats: the "
           "communication the step waits for (what overlapping it with the backward pass did not hide). On a loaded "
           "machine it can come out negative: recorded as measured.", fmt=",.1f"),
    Metric("exposed_comm_std_ms", "exposed comm std ms", "Sample standard deviation of `exposed comm ms` over the "
           "probe's repeats (blank with one repeat).", fmt=",.1f"),
    Metric("exposed_comm_share", "exposed comm %", "Exposed communication (`exposed comm ms`: synced minus no-sync "
           "step, after the run) as a share of the synced step.", scale=100, fmt=".1f"),
    Metric("rank_skew", "rank skew %", "Stragglers: per repeat, the slowest process's no-sync step over the "
           "fastest's, less one; median over repeats (DDP's buffer broadcast at each forward still couples them).",
           scale=100, fmt=".1f"),
    Metric("grad_bytes", "grad MiB", "Gradient bytes each process computes per step (every trainable parameter's "
           "gradient).", scale=1 / MIB, fmt=",.1f", aggregate="first"),
    Metric("wire_bytes", "wire MiB", "Bytes each process puts into the gradient all-reduces per step after the "
           "communication hook: the gradient's with none, half with fp16/bf16, PowerSGD's low-rank factors and the "
           "tensors it leaves uncompressed (its own counters).", scale=1 / MIB, fmt=",.1f", aggregate="first"),
    Metric("bucket_algbw_gbs", "bucket alg GB/s", "All-reduce algorithm bandwidth for one DDP bucket (its "
           "--bucket-cap-mb, fp32) timed alone after the run: bytes / seconds (nccl-tests' definition; 1 GB = 10^9 "
           "bytes; median over repeats).", fmt=",.2f"),
    Metric("bucket_busbw_gbs", "bucket bus GB/s", "Bus bandwidth of that bucket's all-reduce, algbw x 2(n-1)/n for n "
           "processes (nccl-tests'): what each process's link carried, comparable with the link's peak.", fmt=",.2f"),
    Metric("grad_algbw_gbs", "grad alg GB/s", "All-reduce algorithm bandwidth for the whole gradient in one piece "
           "(fp32), timed alone after the run.", fmt=",.2f"),
    Metric("grad_busbw_gbs", "grad bus GB/s", "Bus bandwidth of the whole gradient's all-reduce, algbw x 2(n-1)/n "
           "(nccl-tests'): what the link delivered to DDP's traffic at its largest.", fmt=",.2f"),
    # -- cold start
    Metric("time_to_first_step_s", "first step s", "Wall seconds from the run's start to the end of its first "
           "training step, device synchronised: data preparation, model build, compilation and the first batch, all "
           "outside the timed window (a resumed run: its last session's).", fmt=",.1f"),
    Metric("compile_s", "compile s", "Seconds torch.compile spent compiling during the run (training and "
           "evaluation graphs; dynamo's own timer), outside the timed window; blank for eager runs.", fmt=",.1f"),
    # -- inference of the trained model
    *(Metric(f"{prefix}_{q}_ms", f"{label} {q} ms", f"{what}latency of one image (batch 1) in evaluation mode, in the "
             f"run's precision and memory format: the {q[1:]}th percentile of calls each timed on its own (device "
             "synchronised; warm-up excluded; at least --inference-min-seconds and --inference-min-calls)"
             + ("; blank unless the run compiled." if prefix == "compiled_infer" else "."), fmt=",.2f")
      for prefix, label, what in (("infer", "infer", "Inference "), ("compiled_infer", "compiled infer",
                                                                      "Compiled (the run's mode) inference "))
      for q in ("p50", "p95", "p99")),
    Metric("infer_images_per_s", "infer img/s", "Inference images per second of the trained model at `infer batch` "
           "(eager, calls back to back, device synchronised at both ends of the window); blank when that batch ran "
           "out of memory (the record's `inference` says `oom`).", fmt=",.0f"),
    Metric("compiled_infer_images_per_s", "compiled infer img/s", "The same, compiled with the run's mode; blank "
           "unless the run compiled.", fmt=",.0f"),
    Metric("infer_batch", "infer batch", "Batch of the inference throughput measurement (--inference-batch).",
           fmt=",.0f", aggregate="first"),
    # -- energy and cost
    Metric("energy_kwh", "energy kWh", "Energy of the whole run (from its start to the end of testing) from the "
           "devices' own counters, every device of the run counted once: NVML's on NVIDIA GPUs, RAPL's package "
           "counters on a CPU; blank where none is readable (`energy source` says why), never estimated.", fmt=",.4f"),
    Metric("energy_j_per_image", "J/img", "Joules per training image in the timed windows (the same counters).",
           fmt=",.3f"),
    Metric("energy_to_target_kwh", "energy to target kWh", "Energy from the run's start until validation accuracy "
           "first reached the target (the same counters, read at every validation).", fmt=",.4f"),
    Metric("energy_source", "energy source", "Which counters the energy comes from, or why there is none (no "
           "counter readable, as in most virtual machines; nvidia-ml-py missing; a resumed run).", fmt="",
           aggregate="first"),
    Metric("price_per_hour_usd", "USD/device-h", "Price of one device for an hour (--price-per-hour, or the "
           "device's entry in --price-table).", fmt=",.2f", aggregate="first"),
    Metric("cost_usd", "cost USD", "What the run cost: price x devices (processes) x the run's wall hours, "
           "set-up and evaluation included (DAWNBench's way).", fmt=",.4f"),
    Metric("cost_to_target_usd", "cost to target USD", "Price x devices x wall hours until validation accuracy first "
           "reached the target (`to target wall s`).", fmt=",.4f"),
    # -- the device's state
    Metric("device_throttled", "throttled", "Whether a GPU of the run was slowed down when its timed window opened "
           "or when training ended: NVML's clock-event reasons hardware slowdown, thermal slowdown (hardware or "
           "software) or power brake. Running at the software power cap, normal under load, does not count (every "
           "active reason is in the record's `device_state`); over seeds, in how many runs; blank on a CPU or "
           "without NVML.", fmt="", aggregate="count"),
    Metric("power_limited", "power capped", "Whether a GPU of the run had an enforced power limit below its default "
           "(an administrator's cap: a real slowdown) at those instants; both limits are in the record's "
           "`env.machine.gpu`; over seeds, in how many runs; blank on a CPU, without NVML or on a MIG slice.", fmt="",
           aggregate="count"),
    Metric("device_shared", "shared GPU", "Whether another process used a GPU of the run at those instants (a shared "
           "GPU corrupts timings); over seeds, in how many runs; blank on a CPU, without NVML, or where NVML lists none "
           "of the run's own processes (in a container it gives host PIDs: the snapshot's note says so).", fmt="",
           aggregate="count"),
    # -- settings resolved at run time
    Metric("peak_lr", "peak lr", "The learning rate at the top of the schedule.", fmt=".4g", aggregate="first"),
    Metric("compiled_graphs", "compiled graphs", "Graphs torch.compile built during the run: 2 (training and "
           "evaluation) means no recompilation; blank for eager runs.", fmt=",.0f", aggregate="max"),
    Metric("lr_warmup_steps", "lr warm-up steps", "Steps of linear learning-rate warm-up the schedule resolved to "
           "(a share of the run, capped at an epoch).", fmt=",.0f", aggregate="first"),
    Metric("lr", "lr", "Learning rate at the row's first step.", fmt=".4g", per_epoch=True, per_run=False),
)
BY_KEY: dict[str, Metric] = {metric.key: metric for metric in METRICS}
HISTORY_KEYS = tuple(metric.key for metric in METRICS if metric.per_epoch)
RUN_KEYS = tuple(metric.key for metric in METRICS if metric.per_run)


def _checked(values: dict[str, Any], expected: tuple[str, ...], what: str) -> dict[str, Any]:
    missing, extra = set(expected) - set(values), set(values) - set(expected)
    if missing or extra:
        raise KeyError(f"{what}: missing {sorted(missing)}, undeclared {sorted(extra)} (declare them in bench/measuring/metrics.py)")
    return {key: values[key] for key in expected}


def history_row(**values: Any) -> dict[str, Any]:
    """One history row: exactly the per-epoch metrics, in declaration order."""
    return _checked(values, HISTORY_KEYS, "history row")


def run_metrics(**values: Any) -> dict[str, Any]:
    """A run's metrics: exactly the per-run metrics, in declaration order."""
    return _checked(values, RUN_KEYS, "run metrics")


def shown(metric: Metric, value: Any) -> Any:
    """A recorded value on the report's scale (None/NaN stay missing, non-numbers unchanged)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Number):
        return value
    return value * metric.scale


def mlperf_time(times: pd.Series) -> tuple[float, float, int, int]:
    """(time, spread, reached, runs) of one configuration's time-to-target values (NaN = never reached)."""
    runs, reached = len(times), int(times.notna().sum())
    if runs >= MLPERF_MIN_RUNS:
        ordered = sorted(times.fillna(math.inf))[1:-1]
        kept = pd.Series(ordered)
        if math.isinf(ordered[-1]):
            return math.nan, math.nan, reached, runs
        return float(kept.mean()), float(kept.std()), reached, runs
    hit = times.dropna()
    return (float(hit.mean()) if reached else math.nan, float(hit.std()) if reached > 1 else math.nan, reached, runs)


def aggregate(group: pd.DataFrame, keys: Iterable[str]) -> dict[str, Any]:
    """One configuration's runs (one row per seed) aggregated: metric key -> shown value (`KEY_std` its spread,
    `reached` how many runs got to the target)."""
    out: dict[str, Any] = {}
    for key in keys:
        metric = BY_KEY[key]
        values = group[key] if key in group else pd.Series([math.nan] * len(group))
        numeric = pd.to_numeric(values, errors="coerce")
        if metric.aggregate == "time":
            time, spread, reached, runs = mlperf_time(numeric)
            out[key] = shown(metric, time)
            if metric.spread:
                out[f"{key}_std"] = shown(metric, spread)
            has_target = "target_accuracy" in group and group["target_accuracy"].notna().any()
            out["reached"] = f"{reached}/{runs}" if has_target else None
        elif metric.aggregate == "first":
            present = values.dropna()
            out[key] = shown(metric, present.iloc[0]) if len(present) else None
        elif metric.aggregate == "count":
            present = values.dropna()
            out[key] = f"{int(present.astype(bool).sum())}/{len(present)}" if len(present) else None
        elif metric.aggregate == "max":
            out[key] = shown(metric, numeric.max())
        elif metric.aggregate == "sum":
            out[key] = shown(metric, numeric.sum())
        else:
            out[key] = shown(metric, numeric.mean())
            if metric.spread:
                out[f"{key}_std"] = shown(metric, numeric.std())
    return out


AGGREGATION_WORDS = {"mean": "mean", "max": "worst (max)", "first": "the same for all", "sum": "the sum", "time": "MLPerf's rule",
                     "count": "how many of how many"}


def markdown_glossary() -> str:
    """Every declared measurement as a markdown table (`python -m bench.measuring.metrics`; docs/measurements.md embeds it)."""
    lines = ["| column | record field | in | over seeds | meaning |", "|---|---|---|---|---|"]
    for metric in METRICS:
        where = " and ".join(name for name, flag in (("history", metric.per_epoch), ("metrics", metric.per_run)) if flag)
        seeds = AGGREGATION_WORDS[metric.aggregate] + (" ± std" if metric.spread else "") if metric.per_run else ""
        lines.append(f"| `{metric.label}` | `{metric.key}` | {where} | {seeds} | {metric.explanation} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_glossary())
