"""Results from several folders as one (the same run on the same device kind counted once), and a
configuration-by-configuration comparison with a baseline that flags a throughput drop beyond the noise (the rule and
why: docs/design.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd

from bench.reporting.columns import BASELINE
from bench.reporting.headline import config_label
from bench.reporting.tables import CONFIG_KEYS, grouped, sorted_rows
from bench.results.records import Record, load_records, load_sweeps
from bench.results.schema import RunRecord, SweepRecord

NOISE_FLOOR_PCT = 5.0  # separate processes on one GPU differ by 1-3 % in throughput; 5 % clears that
NOISE_SIGMAS = 2.0  # two combined standard deviations: ~95 % of noise-only differences stay inside
SWEEP_IDENTITY = ("model", "dataset", "mode", "precision", "channels_last", "compile", "batch_size", "data",
                  "world_size", "search")
COMPARED = ["test_acc", "train_images_per_s", "peak_mem_allocated_bytes", "time_to_target_s"]
SIDE = [*CONFIG_KEYS, "device", "n", *COMPARED, "images_per_s_cv"]


@dataclass
class Merged:
    """The records of one or more results folders, duplicates dropped."""

    folders: list[Path]
    runs: list[RunRecord] = field(default_factory=list)
    sweeps: list[SweepRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    dropped: int = 0  # duplicate run and sweep records left out


def deduplicated(records: list[Record], identity: Callable[[Record], Hashable], good: str,
                 stamps: tuple[str, ...]) -> tuple[list[Record], int]:
    """One record per identity: one with status `good` if there is one, the latest among those (by the first of
    `stamps` a record has; time zones respected, no time loses), else the first met. Returns the records kept and
    how many were not."""
    frame = pd.DataFrame({
        "key": [identity(record) for record in records],
        "good": [record.status == good for record in records],
        "time": pd.to_datetime([next((getattr(record, stamp) for stamp in stamps if getattr(record, stamp)), None)
                                for record in records], utc=True, errors="coerce", format="ISO8601"),
        "earlier folder": range(len(records), 0, -1),  # a full tie keeps the record met first
    })
    ranked = frame.sort_values(["good", "time", "earlier folder"], na_position="first")
    kept = ranked.drop_duplicates("key", keep="last")
    return [records[index] for index in sorted(kept.index)], len(records) - len(kept)


def load_merged(folders: Sequence[Path]) -> Merged:
    """Every run and sweep record under `folders`, the same run on the same device kind kept once."""
    merged = Merged(folders=[Path(folder) for folder in folders])
    runs, sweeps = [], []
    for folder in merged.folders:
        for found, load in ((runs, load_records), (sweeps, load_sweeps)):
            good, bad = load(folder)
            found += good
            merged.skipped += bad
    merged.runs, dropped_runs = deduplicated(runs, lambda r: (r.run_id, r.device), "finished",
                                             ("finished_at", "started_at"))
    merged.sweeps, dropped_sweeps = deduplicated(
        sweeps, lambda r: (*(getattr(r, key) for key in SWEEP_IDENTITY), r.device), "ok", ("measured_at",))
    merged.dropped = dropped_runs + dropped_sweeps
    return merged


def throughput_cv(histories: pd.Series) -> float:
    """Coefficient of variation of the train img/s of every evaluation row of these runs (NaN below two rows)."""
    rates = pd.to_numeric(pd.Series([row.get("train_images_per_s") for history in histories for row in history],
                                    dtype=object), errors="coerce")
    rates = rates[rates > 0]
    return float(rates.std() / rates.mean()) if len(rates) > 1 else math.nan


def sides(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and device: the compared metrics over seeds, and the throughput's noise."""
    finished = runs[runs["status"] == "finished"]
    if finished.empty:
        return pd.DataFrame(columns=SIDE)
    table = grouped(finished, [*CONFIG_KEYS, "device"], COMPARED,
                    facts=lambda group: {"images_per_s_cv": throughput_cv(group["history"])})
    return table.reindex(columns=SIDE)


def change_pct(ours: pd.Series, baseline: pd.Series) -> pd.Series:
    return (ours / baseline - 1) * 100


def comparison_table(current: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Every configuration on both sides (on the same device when it has one in common, else per device pair): accuracy difference, changes in throughput, memory and
    time to target, the noise allowed, and whether throughput fell beyond it."""
    ours = sides(current)
    theirs = sides(baseline).rename(columns=lambda column: column if column in CONFIG_KEYS else f"{BASELINE}{column}")
    both = ours.merge(theirs, on=CONFIG_KEYS)
    same = both["device"] == both["baseline_device"]
    has_same = same.groupby([both[key] for key in CONFIG_KEYS], dropna=False).transform("any").astype(bool)
    both = both[same | ~has_same].copy()
    acc, rate, memory, target = COMPARED
    both["acc_diff_pp"] = both[acc] - both[f"baseline_{acc}"]
    both["images_per_s_change_pct"] = change_pct(both[rate], both[f"baseline_{rate}"])
    both["peak_mem_change_pct"] = change_pct(both[memory], both[f"baseline_{memory}"])
    both["to_target_change_pct"] = change_pct(both[target], both[f"baseline_{target}"])
    combined = np.hypot(both["images_per_s_cv"].astype(float).fillna(0),
                        both["baseline_images_per_s_cv"].astype(float).fillna(0))
    both["noise_pct"] = np.maximum(NOISE_FLOOR_PCT, NOISE_SIGMAS * 100 * combined)
    both["regression"] = both["images_per_s_change_pct"] < -both["noise_pct"]
    columns = [*CONFIG_KEYS, "device", "baseline_device", "n", "baseline_n", acc, f"baseline_{acc}", "acc_diff_pp",
               rate, f"baseline_{rate}", "images_per_s_change_pct", "noise_pct", "regression", memory,
               f"baseline_{memory}", "peak_mem_change_pct", target, f"baseline_{target}", "to_target_change_pct"]
    return sorted_rows(both.reindex(columns=columns), [*CONFIG_KEYS, "device", "baseline_device"])


COMPARISON_SHOWN = ["model", "dataset", "configuration", "device", "baseline_device", "acc_diff_pp",
                    "images_per_s_change_pct", "noise_pct", "peak_mem_change_pct", "to_target_change_pct", "regression"]


def comparison_view(comparison: pd.DataFrame) -> pd.DataFrame:
    """The columns the report shows: the configuration in words, the differences, and the flag as text."""
    view = comparison.assign(configuration=[config_label(row) for _, row in comparison.iterrows()],
                             regression=comparison["regression"].map({True: "slower", False: ""}))
    return view.reindex(columns=COMPARISON_SHOWN)


def regressions(comparison: pd.DataFrame) -> list[str]:
    """One phrase per flagged configuration: what, where, and by how much."""
    flagged = comparison[comparison["regression"].astype(bool)]
    return [f"{row['model']} on {row['dataset']} ({config_label(row)}; {row['device']} vs {row['baseline_device']}): "
            f"{row['images_per_s_change_pct']:+.1f} % img/s, noise {row['noise_pct']:.1f} %"
            for _, row in flagged.iterrows()]
