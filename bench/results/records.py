"""Run records, speed-sweep records and checkpoints on disk.

A record is one JSON file per run under `results/runs/` (per sweep point under `results/speed/`),
written whole (common/files.py), so a killed suite never leaves a half-written record. Unfinished runs
live in `results/checkpoints/<run_id>/` as Accelerate state folders plus `progress.json`, which names
the last complete one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from common.files import write_json_atomic

RECORD_SCHEMA = 1
# A record's status is one of finished, diverged, oom, failed. --resume skips the final ones and retries
# a crashed ("failed") run.
FINAL_STATUSES = ("finished", "diverged", "oom")
RUN_FIELDS = ("run_id", "status", "model", "dataset", "metrics")
SWEEP_FIELDS = ("model", "mode", "batch_size", "status")


def runs_dir(results_dir: Path) -> Path:
    return results_dir / "runs"


def sweeps_dir(results_dir: Path) -> Path:
    return results_dir / "speed"


def record_path(results_dir: Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def checkpoint_dir(results_dir: Path, run_id: str) -> Path:
    return results_dir / "checkpoints" / run_id


def write_record(results_dir: Path, record: dict) -> Path:
    return write_json_atomic(record_path(results_dir, record["run_id"]), record)


def existing_record(results_dir: Path, run_id: str) -> dict | None:
    """The stored record of a run, or None when there is none or it cannot be read."""
    try:
        return json.loads(record_path(results_dir, run_id).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_folder(folder: Path, required: tuple[str, ...]) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every readable JSON record in `folder` (none is fine), and (path, reason) for each unreadable one."""
    good, bad = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # ValueError covers bad JSON and bad UTF-8
            bad.append((path, f"not valid JSON ({error})"))
            continue
        if not isinstance(record, dict):
            bad.append((path, "not a JSON object"))
            continue
        missing = [key for key in required if key not in record]
        if missing:
            bad.append((path, f"missing fields {missing}"))
            continue
        good.append(record)
    return good, bad


def load_records(results_dir: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    return load_folder(runs_dir(results_dir), RUN_FIELDS)


def load_sweeps(results_dir: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    return load_folder(sweeps_dir(results_dir), SWEEP_FIELDS)


def write_progress(results_dir: Path, run_id: str, progress: dict) -> Path:
    return write_json_atomic(checkpoint_dir(results_dir, run_id) / "progress.json", progress)


def read_progress(results_dir: Path, run_id: str) -> dict | None:
    """The progress of an unfinished run (last complete epoch, history, state folder), if any."""
    path = checkpoint_dir(results_dir, run_id) / "progress.json"
    try:
        progress = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    state = checkpoint_dir(results_dir, run_id) / progress.get("state", "")
    return progress if state.is_dir() else None


def prune_states(folder: Path, keep: str) -> None:
    """Remove every epoch state folder but `keep` (after progress.json names it)."""
    for old in folder.glob("epoch-*"):
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def remove_checkpoints(results_dir: Path, run_id: str) -> None:
    shutil.rmtree(checkpoint_dir(results_dir, run_id), ignore_errors=True)
