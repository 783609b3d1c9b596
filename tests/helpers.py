"""What several test modules share: how to run the real runner in a subprocess and read what it wrote."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.results.records import load_records
from bench.results.schema import RunRecord
from data.datasets import get_spec
from data.sources import RawDataset, locate_source, read_source, source_checksums

REPO = Path(__file__).resolve().parent.parent
# The smallest suite that still trains: 64 synthetic train+val images (54 train, 10 val), 21 test images
# (odd, so that two ranks pad), batch 16, one warm-up step; its trained model's inference timed briefly (batch 4, a
# few calls: a fraction of a second a run).
TINY = ["--preset", "smoke", "--synthetic-size", "64", "21", "--batch-size", "16", "--warmup-steps", "1",
        "--inference-batch", "4", "--inference-min-seconds", "0.01", "--inference-min-calls", "5"]
# The smoke suite's configuration (tests/conftest.py: TINY for one epoch), as a headline's caption names it.
SMOKE_CONFIGURATION = "Configuration: recipe fast, 1 epoch, batch 16 x 1 process, precision fp32, 64+21 synthetic images."


def run_bench(args: list[str], results: Path, cache: Path, launcher: list[str] | None = None,
              timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench.run ARGS` (or a launcher around bench/run.py) with its results and cache folders."""
    command = (launcher or [sys.executable, "-m", "bench.run"]) + args + ["--results-dir", str(results), "--cache-dir", str(cache)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def run_module(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def plugin_env(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    """The environment of a process that can import the module `name`, written with `text`."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{name}.py").write_text(text)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}


def records_in(results: Path) -> list[RunRecord]:
    """Every run record in `results`, typed; an unreadable one fails the test."""
    records, unreadable = load_records(results)
    assert not unreadable, unreadable
    return records


def read_raw(raw) -> SimpleNamespace:
    """A raw dataset (data/sources.py) with both official splits read whole through their chunks, as an encoder
    streams them: train_images, train_labels, test_images, test_labels, and its spec, origin and checksum."""
    arrays = {}
    for name, split in (("train", raw.train), ("test", raw.test)):
        chunks = list(split.chunks(np.arange(len(split.labels))))
        assert np.array_equal(np.concatenate([chunk.labels for chunk in chunks]), split.labels)
        arrays[f"{name}_images"] = np.concatenate([chunk.pixels() for chunk in chunks])
        arrays[f"{name}_labels"] = split.labels
    return SimpleNamespace(**arrays, spec=raw.spec, origin=raw.origin, checksum=raw.checksum)


def load_raw(name: str, data_dir: Path | None, cache_dir: Path, download: bool = True) -> RawDataset:
    """A real dataset's official files, found as the encoder finds them and opened (every label checked)."""
    source = locate_source(name, data_dir, cache_dir, download)
    return read_source(get_spec(name), source, source_checksums(cache_dir).digest(source.paths))
