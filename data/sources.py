"""Raw datasets: locate a registered dataset's official files (or download them), or make a synthetic one.

Everything returns uint8 images shaped (N, H, W, C) and int64 labels. Lookup order for real data: a
local directory (argument, else $DEEPNETS_DATA_DIR), files downloaded earlier into `<cache>/raw`,
then a download with torchvision's utilities (md5-verified). What the files look like and where they
come from is the dataset entry's format (data/datasets.py, data/formats.py); this module only walks
that order and turns every failure into one `DataError` line that says what to place where.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from data.datasets import DatasetSpec, get_spec
from data.errors import DataError
from data.formats import SourceFiles

DATA_DIR_ENV = "DEEPNETS_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation: an offline machine must fail fast, not hang


@dataclass
class RawDataset:
    spec: DatasetSpec
    train_images: np.ndarray  # (N, h, w, C) uint8, official training set (train + val)
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str  # human-readable: where and in which format the data came from
    checksum: str  # sha256 of the source files' bytes, or of the synthetic parameters


def read_source(spec: DatasetSpec, source: SourceFiles) -> RawDataset:
    return RawDataset(spec, *source.parse(), origin=source.origin, checksum=source.checksum)


# ---------------------------------------------------------------- locating and downloading

class _DownloadFailed(Exception):
    pass


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(spec: DatasetSpec, raw_dir: Path) -> None:
    """Fetch the files the dataset's format names into raw_dir (md5-verified, first working mirror).

    Files land in a temporary folder first and are moved into place only once verified, so a failed
    download leaves nothing half-written.
    """
    from torchvision.datasets.utils import download_url

    plan = spec.source.download()
    dest = raw_dir / plan.folder
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp, _socket_timeout(DOWNLOAD_TIMEOUT_S):
        for urls, filename, md5 in plan.files:
            if (dest / filename).is_file():
                continue
            error = ""
            for url in urls:
                try:
                    download_url(url, tmp, filename, md5)
                    break
                except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
                    error = f"{url}: {e}"
            else:
                raise _DownloadFailed(error)
            os.replace(Path(tmp) / filename, dest / filename)


def _local_dir(data_dir: Path | None) -> Path | None:
    if data_dir is not None:
        where = str(data_dir)
    elif os.environ.get(DATA_DIR_ENV):
        data_dir, where = Path(os.environ[DATA_DIR_ENV]), f"{os.environ[DATA_DIR_ENV]} (from ${DATA_DIR_ENV})"
    else:
        return None
    if not data_dir.is_dir():
        raise DataError(f"data directory {where} does not exist; expected a directory holding the dataset files")
    return data_dir


def locate_source(name: str, data_dir: Path | None, cache_dir: Path, download: bool = True) -> SourceFiles:
    """Find the official files: local dir, then `<cache_dir>/raw`, then a download into `<cache_dir>/raw`."""
    spec = get_spec(name)
    local = _local_dir(data_dir)
    raw_dir = Path(cache_dir) / "raw"
    for directory in (local, raw_dir):
        if directory is not None and directory.is_dir() and (found := spec.source.find(directory, spec)):
            return found
    searched = " or ".join(str(d) for d in (local, raw_dir) if d is not None)
    reason = "downloading is disabled"
    if download:
        try:
            _download(spec, raw_dir)
            if found := spec.source.find(raw_dir, spec):
                return found
            reason = "the download did not produce the expected files"
        except _DownloadFailed as e:
            reason = f"download failed ({e})"
    raise DataError(f"{spec.title} not found in {searched} and {reason}: place {spec.source.place_hint()} "
                    f"(DIR = a directory you pass as --data-dir DIR or set as {DATA_DIR_ENV})")


def load_raw(name: str, data_dir: Path | None, cache_dir: Path, download: bool = True) -> RawDataset:
    """Read and validate a real dataset (see the module docstring for where it is looked for)."""
    return read_source(get_spec(name), locate_source(name, data_dir, cache_dir, download))


# ---------------------------------------------------------------- synthetic data

SYNTHETIC_GENERATOR = "textures-v1"  # bump when the generator changes: it is part of the cache key
STRIPE_PERIOD = 4  # native pixels (about 9 after the resize to 64)
TEXTURES = 5  # horizontal stripes, vertical stripes, checks, grid, flat


def synthetic_checksum(name: str, n_train: int, n_test: int, seed: int) -> str:
    params = {"generator": SYNTHETIC_GENERATOR, "name": name, "n_train": n_train, "n_test": n_test, "seed": seed}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _synthetic_split(spec: DatasetSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class c = texture (c % 5: horizontal stripes, vertical stripes, checks, grid, flat) x brightness
    level (c // 5, evenly spaced from 120 to 230: two levels for ten classes).

    Local textures with a random phase survive horizontal flips and small crops, and a CNN picks them
    up with its first filters whatever its pooling, so a small model learns them within a few dozen
    steps; the background noise keeps them from being trivial.
    """
    s, c, classes = spec.native_size, spec.channels, spec.num_classes
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)  # balanced to within one
    levels = np.linspace(120, 230, max(2, -(-classes // TEXTURES))).round().astype(np.int64)
    level = levels[labels // TEXTURES] + rng.integers(-10, 11, n)
    coord = np.arange(s)
    phases = rng.integers(0, STRIPE_PERIOD, (2, n))
    rows = (((coord[None, :] + phases[0][:, None]) % STRIPE_PERIOD) < STRIPE_PERIOD // 2)[:, :, None]  # (n, s, 1)
    cols = (((coord[None, :] + phases[1][:, None]) % STRIPE_PERIOD) < STRIPE_PERIOD // 2)[:, None, :]  # (n, 1, s)
    textures = np.stack(np.broadcast_arrays(rows, cols, rows ^ cols, rows | cols, np.ones((n, s, s), bool)))
    mask = textures[labels % TEXTURES, np.arange(n)]  # (n, s, s)
    background = rng.integers(0, 25, (n, s, s, c))
    images = np.where(mask[..., None], level[:, None, None, None] + background // 2, background)
    return images.clip(0, 255).astype(np.uint8), labels


def make_synthetic(name: str, n_train: int, n_test: int, seed: int = 0) -> RawDataset:
    """A deterministic, balanced, learnable stand-in with the real dataset's native shapes and classes."""
    spec = get_spec(name)
    if min(n_train, n_test) < spec.num_classes:
        raise DataError(f"synthetic {name}: n_train={n_train}, n_test={n_test}; "
                        f"expected at least {spec.num_classes} each (one per class)")
    # Separate streams, so the test set does not depend on the size of the training set.
    train = _synthetic_split(spec, n_train, np.random.default_rng([seed, 0]))
    test = _synthetic_split(spec, n_test, np.random.default_rng([seed, 1]))
    return RawDataset(spec, *train, *test, origin=f"synthetic {name} (seed {seed}, {n_train} train, {n_test} test)",
                      checksum=synthetic_checksum(name, n_train, n_test, seed))
