"""Shared test fixtures.

Real-data tests read genuine MNIST from the directory named by DEEPNETS_DATA_DIR (CI points it at a
local copy when there is one) and are skipped when it is unset or holds no MNIST files.

The 12-run smoke suite (the six models on synthetic MNIST and CIFAR-10) is run once per session
through the real runner, as two concurrent shards sharing one results folder and one cache (the way a
job array runs a suite), then reported on once; the tests that read its records, report and output share it.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from helpers import TINY, run_bench, run_module

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _has_mnist(directory: Path) -> bool:
    for sub in (directory, directory / "mnist", directory / "MNIST" / "raw"):
        if all((sub / f).exists() or (sub / f"{f}.gz").exists() for f in MNIST_FILES):
            return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` need a GPU: skipped here without one, selected on a GPU box by `pytest -m cuda`."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def children_can_use_an_exclusive_gpu(request) -> None:
    """A test marked `spawns` starts processes that need the GPU: where the GPU admits one CUDA context
    (EXCLUSIVE_PROCESS) and this pytest process already holds one, they could not start; skipped, saying how to run
    it (scripts/gpu-check.sh runs such tests in a pytest process of their own)."""
    if request.node.get_closest_marker("spawns") and torch.cuda.is_initialized():
        from bench.measuring.machine import gpu_state
        from bench.measuring.nvml import for_device

        if gpu_state(for_device(torch.device("cuda", 0))).get("compute_mode") == "exclusive_process":
            pytest.skip("the GPU is EXCLUSIVE_PROCESS and this pytest process holds a CUDA context: run "
                        "-m 'cuda and spawns' in a pytest process of its own")


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder every pytest-xdist worker of this session sees (scripts/test.sh runs one per core; the
    base temp folder's parent is common to them), else a temp folder of this process."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / name
        folder.mkdir(exist_ok=True)
        return folder
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The directory with genuine MNIST, or skip the test."""
    value = os.environ.get("DEEPNETS_DATA_DIR")
    if not value or not _has_mnist(Path(value)):
        pytest.skip("real MNIST not available (set DEEPNETS_DATA_DIR to a directory holding its idx files)")
    return Path(value)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One FFCV cache for the runner tests of every worker: each synthetic size is encoded once per session
    (prepare_dataset's file lock lets the workers share it)."""
    return shared_folder(tmp_path_factory, "cache")


@dataclass(frozen=True)
class SmokeSuite:
    results: Path  # read-only for tests: copy it (`copy_results`) before writing into it
    stdout: str  # both shards' output, then the report's
    args: tuple[str, ...]  # the runner's options, less --shard and the folders

    def copy_results(self, destination: Path) -> Path:
        shutil.copytree(self.results, destination)
        return destination


@pytest.fixture(scope="session")
def smoke_suite(tmp_path_factory, cache_dir) -> SmokeSuite:
    """Run once per session, whichever worker asks first (the others wait on its lock and read its files)."""
    folder = shared_folder(tmp_path_factory, "smoke")
    results, output = folder / "results", folder / "stdout.txt"
    # One core per shard (two shards on two cores); a price, so that every record has its cost.
    args = (*TINY, "--epochs", "1", "--num-workers", "1", "--price-per-hour", "2.5")
    with FileLock(folder / "build.lock"):
        if not output.exists():
            with ThreadPoolExecutor(2) as pool:
                shards = list(pool.map(lambda shard: run_bench([*args, "--shard", f"{shard}/2"], results, cache_dir),
                                       (1, 2)))
            for done in shards:
                assert done.returncode == 0, f"smoke suite shard failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            report = run_module("bench.report", "--results-dir", str(results))  # over both shards' records
            assert report.returncode == 0, report.stderr[-3000:]
            output.write_text("".join(done.stdout for done in shards) + report.stdout)
    return SmokeSuite(results, output.read_text(), args)
