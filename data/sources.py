"""Raw datasets: find a registered dataset's official files (a local folder, the cache, else a checksummed download),
or make a synthetic stand-in; every failure is one line saying what to place where.
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

from common.files import ChecksumCache
from data.datasets import DatasetSpec, get_spec
from data.errors import DataError
from data.formats import ArraySplit, OfficialSplit, SourceFiles

DATA_DIR_ENV = "DEEPNETS_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation: an offline machine must fail fast, not hang
CHECKSUMS_FILE = "source-checksums.json"  # in the cache folder: the sources' sha256s by path, size and mtime


@dataclass
class RawDataset:
    spec: DatasetSpec
    train: OfficialSplit  # the official training set (train + val)
    test: OfficialSplit
    origin: str  # human-readable: where and in which format the data came from
    checksum: str  # sha256 of the source files' bytes, or of the synthetic parameters


def source_checksums(cache_dir: Path) -> ChecksumCache:
    return ChecksumCache(Path(cache_dir) / CHECKSUMS_FILE)


def read_source(spec: DatasetSpec, source: SourceFiles, checksum: str) -> RawDataset:
    """Open the files: their structure and every label are checked here, the pixels read later, in chunks."""
    return RawDataset(spec, *source.open(), origin=source.origin, checksum=checksum)


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
    if download and spec.source.download() is None:
        reason = "it cannot be downloaded"
    elif download:
        try:
            _download(spec, raw_dir)
            if found := spec.source.find(raw_dir, spec):
                return found
            reason = "the download did not produce the expected files"
        except _DownloadFailed as e:
            reason = f"download failed ({e})"
    raise DataError(f"{spec.title} not found in {searched} and {reason}: place {spec.source.place_hint()} "
                    f"(DIR = a directory you pass as --data-dir DIR or set as {DATA_DIR_ENV})")



# ---------------------------------------------------------------- synthetic data

SYNTHETIC_GENERATOR = "textures-v2"  # bump when the generator changes: it is part of the cache key
STRIPE_PERIOD = 4  # native pixels (about 9 after the resize to 64)
TEXTURES = 5  # horizontal stripes, vertical stripes, checks, grid, flat
LOW, HIGH = 120, 230  # the range of a pattern's brightness in each channel


def synthetic_checksum(name: str, n_train: int, n_test: int, seed: int) -> str:
    params = {"generator": SYNTHETIC_GENERATOR, "name": name, "n_train": n_train, "n_test": n_test, "seed": seed}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def pattern_colours(classes: int, channels: int) -> np.ndarray:
    """(classes // 5 rounded up, channels) brightness per channel: L evenly spaced levels per channel, L the fewest
    whose combinations number enough, the L greys first. Ten classes get grey 120 and 230; 1,000 RGB classes six
    levels 22 apart, more than the +-10 jitter of a pattern's brightness can blur."""
    needed = max(2, -(-classes // TEXTURES))
    steps = next(steps for steps in range(2, needed + 1) if steps ** channels >= needed)
    levels = np.linspace(LOW, HIGH, steps).round().astype(np.int64)
    combos = np.stack(np.meshgrid(*[np.arange(steps)] * channels, indexing="ij"), -1).reshape(-1, channels)
    greys = (combos == combos[:, :1]).all(axis=1)
    return levels[np.concatenate([combos[greys], combos[~greys]])[:needed]]


def _synthetic_split(spec: DatasetSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class c = texture (c % 5: horizontal stripes, vertical stripes, checks, grid, flat) x colour (c // 5,
    `pattern_colours`: two greys for ten classes).

    Local textures with a random phase survive horizontal flips and small crops, and a CNN picks them
    up with its first filters whatever its pooling, so a small model learns them within a few dozen
    steps; the background noise keeps them from being trivial.
    """
    s, c, classes = spec.native_size, spec.channels, spec.num_classes
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)  # balanced to within one
    level = pattern_colours(classes, c)[labels // TEXTURES] + rng.integers(-10, 11, n)[:, None]  # (n, c)
    coord = np.arange(s)
    phases = rng.integers(0, STRIPE_PERIOD, (2, n))
    rows = (((coord[None, :] + phases[0][:, None]) % STRIPE_PERIOD) < STRIPE_PERIOD // 2)[:, :, None]  # (n, s, 1)
    cols = (((coord[None, :] + phases[1][:, None]) % STRIPE_PERIOD) < STRIPE_PERIOD // 2)[:, None, :]  # (n, 1, s)
    textures = np.stack(np.broadcast_arrays(rows, cols, rows ^ cols, rows | cols, np.ones((n, s, s), bool)))
    mask = textures[labels % TEXTURES, np.arange(n)]  # (n, s, s)
    background = rng.integers(0, 25, (n, s, s, c))
    images = np.where(mask[..., None], level[:, None, None, :] + background // 2, background)
    return images.clip(0, 255).astype(np.uint8), labels


def make_synthetic(name: str, n_train: int, n_test: int, seed: int = 0) -> RawDataset:
    """A deterministic, balanced, learnable stand-in with the real dataset's native shapes and classes."""
    spec = get_spec(name)
    if min(n_train, n_test) < spec.num_classes:
        raise DataError(f"synthetic {name}: n_train={n_train}, n_test={n_test}; "
                        f"expected at least {spec.num_classes} each (one per class)")
    # Separate streams, so the test set does not depend on the size of the training set.
    train = ArraySplit(*_synthetic_split(spec, n_train, np.random.default_rng([seed, 0])))
    test = ArraySplit(*_synthetic_split(spec, n_test, np.random.default_rng([seed, 1])))
    return RawDataset(spec, train, test, origin=f"synthetic {name} (seed {seed}, {n_train} train, {n_test} test)",
                      checksum=synthetic_checksum(name, n_train, n_test, seed))
