"""The trade-off beyond training speed, per configuration: inference, cold start, energy and cost, and a warning for
results taken on a slowed-down, power-capped or shared GPU.
"""
from __future__ import annotations

import pandas as pd

from bench.reporting.tables import SPEED_KEYS, finished_runs, grouped, sorted_rows

TRADEOFF_METRICS = ["infer_p50_ms", "infer_p95_ms", "infer_p99_ms", "infer_images_per_s", "infer_batch",
                    "compiled_infer_p50_ms", "compiled_infer_p99_ms", "compiled_infer_images_per_s",
                    "time_to_first_step_s", "compile_s", "energy_kwh", "energy_j_per_image", "energy_to_target_kwh",
                    "energy_source", "price_per_hour_usd", "cost_usd", "cost_to_target_usd", "device_throttled",
                    "power_limited", "device_shared"]
FLAGS = {"device_throttled": "throttling GPU", "power_limited": "GPU power-capped below its default limit",
         "device_shared": "GPU shared with other processes"}


def tradeoff_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Inference, cold start, energy, cost and device flags of finished runs, per configuration and device. The
    compiled-inference columns are left out when no run compiled; empty energy columns stay, beside the reason."""
    finished = finished_runs(runs)
    if finished.empty:
        return pd.DataFrame(columns=[*SPEED_KEYS, "n"])
    table = sorted_rows(grouped(finished, SPEED_KEYS, TRADEOFF_METRICS), SPEED_KEYS)
    compiled = [key for key in TRADEOFF_METRICS if key.startswith("compiled_")]
    return table.drop(columns=[key for key in compiled if table[key].isna().all()])


def device_warning(rows: pd.DataFrame) -> str | None:
    """A warning for the models among `rows` (finished runs) measured on a throttled, power-capped or shared GPU, or
    None."""
    parts = []
    for key, what in FLAGS.items():
        if key in rows:
            models = sorted(set(rows.loc[rows[key].fillna(False).astype(bool), "model"]))
            if models:
                parts.append(f"{what} during {', '.join(models)}")
    return ("**Warning:** measured on a " + "; on a ".join(parts) + ": these timings are not the hardware's alone "
            "(the Details' inference, energy and cost table counts the runs).") if parts else None
