"""The record types: JSON round trips, records of the previous schema read as they were meant, and the docs' table."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.report import write_report
from bench.results.records import load_records, load_sweeps, read_record
from bench.results.schema import RECORD_SCHEMA, RecordError, RunRecord, SweepRecord, markdown_fields
from helpers import REPO

SCHEMA1 = REPO / "tests" / "data" / "schema1"  # written by the harness before schema 2 (a run, a failure, a sweep)
PUBLISHED = sorted((REPO / "results" / "published").iterdir())
COPIES = ("model", "dataset", "data_source", "preset", "recipe", "seed", "precision", "batch_size",
          "global_batch_size", "world_size", "num_machines", "device")


def raw(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("folder", [SCHEMA1, *PUBLISHED], ids=lambda folder: folder.name)
def test_schema1_records_read_with_every_copy_from_its_one_place(folder: Path) -> None:
    records, unreadable = load_records(folder)
    assert unreadable == [] and len(records) == len(list((folder / "runs").glob("*.json")))
    for record in records:
        stored = raw(folder / "runs" / f"{record.run_id}.json")
        assert stored.get("schema", 1) == 1 and record.schema == RECORD_SCHEMA  # the failure record had none
        assert {key: getattr(record, key) for key in COPIES if key in stored} == {
            key: stored[key] for key in COPIES if key in stored}
        assert not set(record.config) & {"warmup_steps", "num_workers", "checkpoint_minutes", "inference", "pricing"}
        assert record.metrics == stored["metrics"] and record.history == stored.get("history", [])
        assert RunRecord.from_json(json.loads(json.dumps(record.to_json()))) == record  # and round trips


def test_a_schema1_failure_keeps_its_model_dataset_and_error() -> None:
    (failed,) = [record for record in load_records(SCHEMA1)[0] if record.status == "failed"]
    assert (failed.model, failed.dataset, failed.error) == ("vgg16", "cifar10", "RuntimeError('boom')")
    assert failed.device is None and failed.history == [] and failed.traceback.endswith("RuntimeError: boom\n")


def test_a_schema1_sweep_point_reads_and_round_trips() -> None:
    (point,), unreadable = load_sweeps(SCHEMA1)
    stored = raw(next((SCHEMA1 / "speed").glob("*.json")))
    assert unreadable == [] and (point.device, point.global_batch_size) == (stored["device"], stored["global_batch_size"])
    assert point.images_per_s == stored["images_per_s"] and point.status == "ok"
    assert SweepRecord.from_json(point.to_json()) == point


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda folder: folder.name)
def test_published_records_report_the_numbers_their_tables_hold(folder: Path, tmp_path: Path) -> None:
    """The published tables were written from these records by the schema-1 harness: reading them through the types
    gives the same headline, accuracy, speed and trade-off tables, to the last digit."""
    report = write_report(folder, out=tmp_path)
    for name in ("headline", "accuracy", "speed", "tradeoffs", "weakest_classes"):
        published = folder / "tables" / f"{name}.csv"
        if not published.exists():
            continue
        ours, theirs = pd.read_csv(report.csv_paths[name]), pd.read_csv(published)
        shared = [column for column in theirs.columns if column in ours.columns]
        assert shared == list(theirs.columns), name  # every published column is still there, same header
        pd.testing.assert_frame_equal(ours[shared], theirs, check_dtype=False, obj=name)


@pytest.mark.parametrize("text, reason", [
    ("[1, 2]", "not a JSON object"),
    ('{"status": "finished"}', "missing fields ['model', 'dataset']"),
    ('{"schema": 2, "config": {"model": "m", "dataset": "d"}}', "missing fields ['run_id', 'status']"),
    ('{"schema": 2, "run_id": "x", "status": "done", "config": {"model": "m", "dataset": "d"}}', "status 'done'"),
    ('{"schema": 99, "run_id": "x"}', "schema 99: written by a newer deepnets-bench"),
    ('{"schema": 2, "run_id": ', "not valid JSON"),
])
def test_an_unreadable_record_says_why(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "record.json"
    path.write_text(text)
    with pytest.raises(RecordError, match=re.escape(reason)):
        read_record(path, RunRecord)


def test_a_field_a_newer_harness_added_is_ignored(tmp_path: Path) -> None:
    record = next(record for record in load_records(SCHEMA1)[0] if record.status == "finished")
    data = {**record.to_json(), "a_newer_field": [1, 2, 3]}
    assert RunRecord.from_json(data) == record


def test_the_records_page_lists_every_field() -> None:
    page = (REPO / "docs" / "records.md").read_text()
    shown = page.split("<!-- fields:start -->\n", 1)[1].split("\n<!-- fields:end -->", 1)[0]
    assert shown == markdown_fields(), "regenerate docs/records.md's tables with `python -m bench.results.schema`"


def test_records_rewritten_in_the_current_schema_read_the_same(tmp_path: Path) -> None:
    copy = shutil.copytree(SCHEMA1, tmp_path / "copy")
    for path in (copy / "runs").glob("*.json"):
        path.write_text(json.dumps(read_record(path, RunRecord).to_json()))
    assert load_records(copy)[0] == load_records(SCHEMA1)[0]
