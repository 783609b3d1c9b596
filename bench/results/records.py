"""Run records, sweep records and checkpoints on disk: one JSON file per run (per sweep point), written whole, and for
an unfinished run its state folders with a `progress.json` that names the last complete one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from typing import TypeVar

from bench.results.schema import RecordError, RunRecord, SweepRecord
from common.files import write_json_atomic

Record = TypeVar("Record", RunRecord, SweepRecord)


class CheckpointError(Exception):
    """A saved state that cannot be resumed; the message is one line saying why and what to do."""


def runs_dir(results_dir: Path) -> Path:
    return results_dir / "runs"


def sweeps_dir(results_dir: Path) -> Path:
    return results_dir / "speed"


def record_path(results_dir: Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def checkpoint_dir(results_dir: Path, run_id: str) -> Path:
    return results_dir / "checkpoints" / run_id


def write_record(results_dir: Path, record: RunRecord) -> Path:
    return write_json_atomic(record_path(results_dir, record.run_id), record.to_json())


def write_sweep(results_dir: Path, name: str, record: SweepRecord) -> Path:
    return write_json_atomic(sweeps_dir(results_dir) / f"{name}.json", record.to_json())


def read_record(path: Path, kind: type[Record]) -> Record:
    """The record in `path`; RecordError says why it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError covers bad JSON and bad UTF-8
        raise RecordError(f"not valid JSON ({error})") from None
    return kind.from_json(data)


def existing_record(results_dir: Path, run_id: str) -> RunRecord | None:
    """The stored record of a run, or None when there is none or it cannot be read."""
    try:
        return read_record(record_path(results_dir, run_id), RunRecord)
    except RecordError:
        return None


def load_folder(folder: Path, kind: type[Record]) -> tuple[list[Record], list[tuple[Path, str]]]:
    """Every readable record in `folder` (none is fine), and (path, reason) for each unreadable one."""
    good, bad = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            good.append(read_record(path, kind))
        except RecordError as error:
            bad.append((path, str(error)))
    return good, bad


def load_records(results_dir: Path) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    return load_folder(runs_dir(results_dir), RunRecord)


def load_sweeps(results_dir: Path) -> tuple[list[SweepRecord], list[tuple[Path, str]]]:
    return load_folder(sweeps_dir(results_dir), SweepRecord)


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
