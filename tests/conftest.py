"""Shared test fixtures.

Real-data tests read genuine MNIST from the directory named by DEEPNETS_DATA_DIR (CI points it at a
local copy when there is one) and are skipped when it is unset or holds no MNIST files.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _has_mnist(directory: Path) -> bool:
    for sub in (directory, directory / "mnist", directory / "MNIST" / "raw"):
        if all((sub / f).exists() or (sub / f"{f}.gz").exists() for f in MNIST_FILES):
            return True
    return False


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The directory with genuine MNIST, or skip the test."""
    value = os.environ.get("DEEPNETS_DATA_DIR")
    if not value or not _has_mnist(Path(value)):
        pytest.skip("real MNIST not available (set DEEPNETS_DATA_DIR to a directory holding its idx files)")
    return Path(value)
