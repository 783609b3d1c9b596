"""Raw datasets: find, validate and read MNIST / CIFAR-10 in their official formats, or make synthetic ones.

Everything returns uint8 images shaped (N, H, W, C) and int64 labels. Every problem with a file is a
one-line `DataError` naming the file and what was expected, never a traceback from a library.
Lookup order for real data: a local directory (argument, else $DEEPNETS_DATA_DIR), files downloaded
earlier into `<cache>/raw`, then a download with torchvision's utilities (md5-verified).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import socket
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from data.errors import DataError

DATA_DIR_ENV = "DEEPNETS_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation: an offline machine must fail fast, not hang
NUM_CLASSES = 10


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    native_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_size: int  # images held out of the official training set for validation


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", 1, 28, NUM_CLASSES, (0.1307,), (0.3081,), 10_000),
    "cifar10": DatasetSpec("cifar10", 3, 32, NUM_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5_000),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}") from None


@dataclass
class RawDataset:
    spec: DatasetSpec
    train_images: np.ndarray  # (N, h, w, C) uint8, official training set (train + val)
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str  # human-readable: where and in which format the data came from
    checksum: str  # sha256 of the source files' bytes, or of the synthetic parameters


@dataclass(frozen=True)
class SourceFiles:
    """Located, not yet parsed, source files: enough to checksum them without decoding the data."""

    spec: DatasetSpec
    paths: tuple[Path, ...]  # the files whose bytes identify the source
    origin: str
    parse: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # -> train/test images/labels

    @cached_property  # hashed once: prepare_dataset compares it, then read() stores it
    def checksum(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()

    def read(self) -> RawDataset:
        return RawDataset(self.spec, *self.parse(), origin=self.origin, checksum=self.checksum)


# ---------------------------------------------------------------- MNIST (idx files)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e}); expected a complete file") from None


def read_idx(path: Path, *, expect_images: bool, size: int = 28) -> np.ndarray:
    """Parse one idx file (optionally gzipped): images -> (N, size, size, 1) uint8, labels -> (N,) int64."""
    raw = _read_bytes(path)
    magic, header_len = (IDX_IMAGES_MAGIC, 16) if expect_images else (IDX_LABELS_MAGIC, 8)
    kind = "images" if expect_images else "labels"
    if len(raw) < header_len:
        raise DataError(f"{path}: {len(raw)} bytes is shorter than the {header_len}-byte idx {kind} header")
    header = np.frombuffer(raw, dtype=">u4", count=header_len // 4)
    if header[0] != magic:
        raise DataError(f"{path}: magic number {header[0]} but expected {magic} (idx {kind} file)")
    n = int(header[1])
    if expect_images and (header[2], header[3]) != (size, size):
        raise DataError(f"{path}: images are {header[2]}x{header[3]} but expected {size}x{size}")
    expected = header_len + n * (size * size if expect_images else 1)
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes but the header announces {n} {kind} ({expected} bytes); truncated or corrupt")
    body = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    if expect_images:
        return body.reshape(n, size, size, 1).copy()
    return _checked_labels(body, path)


def _checked_labels(labels: np.ndarray, path: Path | str) -> np.ndarray:
    try:
        labels = np.asarray(labels).astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: labels are not integers; expected class numbers 0..{NUM_CLASSES - 1}") from None
    if labels.ndim != 1:
        raise DataError(f"{path}: labels have shape {labels.shape}; expected a flat list")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)][0]
        raise DataError(f"{path}: label {bad} out of range; expected 0..{NUM_CLASSES - 1}")
    return labels


def _same_length(images: np.ndarray, labels: np.ndarray, where: Path | str) -> None:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; expected one label per image")


def _parse_mnist(paths: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tr_img, tr_lab, te_img, te_lab = paths
    train_images, train_labels = read_idx(tr_img, expect_images=True), read_idx(tr_lab, expect_images=False)
    test_images, test_labels = read_idx(te_img, expect_images=True), read_idx(te_lab, expect_images=False)
    _same_length(train_images, train_labels, tr_lab)
    _same_length(test_images, test_labels, te_lab)
    return train_images, train_labels, test_images, test_labels


def _find_mnist(directory: Path) -> SourceFiles | None:
    """The four idx files (each raw or .gz) flat, in mnist/, or in torchvision's MNIST/raw/ layout."""
    for sub in (directory, directory / "mnist", directory / "MNIST" / "raw"):
        found = []
        for base in MNIST_FILES:
            candidates = [p for p in (sub / base, sub / f"{base}.gz") if p.is_file()]
            if not candidates:
                break
            found.append(candidates[0])
        else:
            paths = tuple(found)
            return SourceFiles(DATASETS["mnist"], paths, f"MNIST idx files in {sub}", partial(_parse_mnist, paths))
    return None


# ---------------------------------------------------------------- CIFAR-10 (binary and python formats)

CIFAR_PIXELS = 32 * 32 * 3
CIFAR_RECORD = 1 + CIFAR_PIXELS
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_BIN_DIR, CIFAR_BIN_TAR = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
CIFAR_PY_DIR, CIFAR_PY_TAR = "cifar-10-batches-py", "cifar-10-python.tar.gz"


def _planes_to_hwc(flat: np.ndarray) -> np.ndarray:
    """CIFAR stores each image as 1024 red, 1024 green, then 1024 blue bytes (row-major planes)."""
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def parse_cifar_binary(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte records "
                        "(1 label + 3072 pixels); truncated or corrupt")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return _planes_to_hwc(records[:, 1:]), _checked_labels(records[:, 0], where)


def parse_cifar_pickle(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    # The official python batches are pickles (torchvision reads them the same way): only use trusted files.
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as e:  # a corrupt pickle can raise almost any exception type
        raise DataError(f"{where}: not a readable CIFAR-10 python batch ({e.__class__.__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where}: expected a pickled dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        raise DataError(f"{where}: b'data' is {data.dtype} {data.shape}; expected uint8 (N, {CIFAR_PIXELS})")
    labels = _checked_labels(np.asarray(batch[b"labels"]), where)
    _same_length(data, labels, where)
    return _planes_to_hwc(data), labels


def _read_member(container: Path, name: str) -> tuple[bytes, str]:
    """One batch file, from an extracted batches directory or straight out of the official tar.gz."""
    if container.is_dir():
        path = container / name
        if not path.is_file():
            raise DataError(f"{path}: missing; expected the official CIFAR-10 batch file here")
        return _read_bytes(path), str(path)
    inner = f"{CIFAR_BIN_DIR if container.name == CIFAR_BIN_TAR else CIFAR_PY_DIR}/{name}"
    where = f"{container}:{inner}"
    try:
        with tarfile.open(container, "r:gz") as tar:
            member = tar.extractfile(inner)
            if member is None:
                raise KeyError(inner)
            return member.read(), where
    except KeyError:
        raise DataError(f"{where}: missing from the archive; expected the official CIFAR-10 layout") from None
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        raise DataError(f"{container}: not a readable tar.gz ({e.__class__.__name__}: {e})") from None


def _parse_cifar(container: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    binary = container.name in (CIFAR_BIN_DIR, CIFAR_BIN_TAR)
    suffix, parse = (".bin", parse_cifar_binary) if binary else ("", parse_cifar_pickle)

    def load(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [parse(*_read_member(container, name + suffix)) for name in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return *load(CIFAR_TRAIN_BATCHES), *load((CIFAR_TEST_BATCH,))


def _cifar_source(container: Path) -> SourceFiles:
    binary = container.name in (CIFAR_BIN_DIR, CIFAR_BIN_TAR)
    fmt = "binary" if binary else "python"
    paths: tuple[Path, ...] = (container,)
    if container.is_dir():
        paths = tuple(container / f"{n}{'.bin' if binary else ''}" for n in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH))
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{container}: missing {', '.join(missing)}; expected the official CIFAR-10 {fmt} batches")
    return SourceFiles(DATASETS["cifar10"], paths, f"CIFAR-10 {fmt} format at {container}", partial(_parse_cifar, container))


def _find_cifar(directory: Path) -> SourceFiles | None:
    """The official binary or python distribution, extracted or not, in `directory` or one level down."""
    # Hidden folders are skipped: an interrupted download leaves its unverified files in one.
    subfolders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    for base in (directory, *subfolders):
        for name in (CIFAR_BIN_DIR, CIFAR_BIN_TAR, CIFAR_PY_DIR, CIFAR_PY_TAR):
            if (base / name).exists():
                return _cifar_source(base / name)
    return None


# ---------------------------------------------------------------- locating and downloading

_FINDERS: dict[str, Callable[[Path], SourceFiles | None]] = {"mnist": _find_mnist, "cifar10": _find_cifar}
_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
_PLACE_HINTS = {
    "mnist": ", ".join(f"{f}.gz" for f in MNIST_FILES),
    "cifar10": f"{CIFAR_BIN_TAR} or {CIFAR_PY_TAR} (or their extracted {CIFAR_BIN_DIR}/ or {CIFAR_PY_DIR}/)",
}


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


def _download(name: str, raw_dir: Path) -> None:
    """Fetch the official files named by torchvision's dataset classes into raw_dir (md5-verified).

    Files land in a temporary folder first and are moved into place only once verified, so a failed
    download leaves nothing half-written.
    """
    from torchvision.datasets import CIFAR10, MNIST
    from torchvision.datasets.utils import download_url

    if name == "mnist":
        dest = raw_dir / "MNIST" / "raw"
        wanted = [([m + f for m in MNIST.mirrors], f, md5) for f, md5 in MNIST.resources]
    else:
        dest = raw_dir
        wanted = [([CIFAR10.url], CIFAR10.filename, CIFAR10.tgz_md5)]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp, _socket_timeout(DOWNLOAD_TIMEOUT_S):
        for urls, filename, md5 in wanted:
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
    find = _FINDERS[spec.name]
    local = _local_dir(data_dir)
    raw_dir = Path(cache_dir) / "raw"
    for directory in (local, raw_dir):
        if directory is not None and directory.is_dir() and (found := find(directory)):
            return found
    searched = " or ".join(str(d) for d in (local, raw_dir) if d is not None)
    reason = "downloading is disabled"
    if download:
        try:
            _download(spec.name, raw_dir)
            if found := find(raw_dir):
                return found
            reason = "the download did not produce the expected files"
        except _DownloadFailed as e:
            reason = f"download failed ({e})"
    raise DataError(f"{_LABELS[spec.name]} not found in {searched} and {reason}: place {_PLACE_HINTS[spec.name]} "
                    f"in a directory and pass --data-dir DIR or set {DATA_DIR_ENV}")


def load_raw(name: str, data_dir: Path | None, cache_dir: Path, download: bool = True) -> RawDataset:
    """Read and validate a real dataset (see the module docstring for where it is looked for)."""
    return locate_source(name, data_dir, cache_dir, download).read()


# ---------------------------------------------------------------- synthetic data

SYNTHETIC_GENERATOR = "textures-v1"  # bump when the generator changes: it is part of the cache key
STRIPE_PERIOD = 4  # native pixels (about 9 after the resize to 64)


def synthetic_checksum(name: str, n_train: int, n_test: int, seed: int) -> str:
    params = {"generator": SYNTHETIC_GENERATOR, "name": name, "n_train": n_train, "n_test": n_test, "seed": seed}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _synthetic_split(spec: DatasetSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class c = texture (c % 5: horizontal stripes, vertical stripes, checks, grid, flat) x brightness (c // 5).

    Local textures with a random phase survive horizontal flips and small crops, and a CNN picks them
    up with its first filters whatever its pooling, so a small model learns them within a few dozen
    steps; the background noise keeps them from being trivial.
    """
    s, c = spec.native_size, spec.channels
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)  # balanced to within one
    level = np.where(labels // 5 == 1, 230, 120) + rng.integers(-10, 11, n)
    coord = np.arange(s)
    phases = rng.integers(0, STRIPE_PERIOD, (2, n))
    rows = (((coord[None, :] + phases[0][:, None]) % STRIPE_PERIOD) < STRIPE_PERIOD // 2)[:, :, None]  # (n, s, 1)
    cols = (((coord[None, :] + phases[1][:, None]) % STRIPE_PERIOD) < STRIPE_PERIOD // 2)[:, None, :]  # (n, 1, s)
    textures = np.stack(np.broadcast_arrays(rows, cols, rows ^ cols, rows | cols, np.ones((n, s, s), bool)))
    mask = textures[labels % 5, np.arange(n)]  # (n, s, s)
    background = rng.integers(0, 25, (n, s, s, c))
    images = np.where(mask[..., None], level[:, None, None, None] + background // 2, background)
    return images.clip(0, 255).astype(np.uint8), labels


def make_synthetic(name: str, n_train: int, n_test: int, seed: int = 0) -> RawDataset:
    """A deterministic, balanced, learnable stand-in with the real dataset's native shapes."""
    spec = get_spec(name)
    if min(n_train, n_test) < NUM_CLASSES:
        raise DataError(f"synthetic {name}: n_train={n_train}, n_test={n_test}; expected at least {NUM_CLASSES} each")
    # Separate streams, so the test set does not depend on the size of the training set.
    train = _synthetic_split(spec, n_train, np.random.default_rng([seed, 0]))
    test = _synthetic_split(spec, n_test, np.random.default_rng([seed, 1]))
    return RawDataset(spec, *train, *test, origin=f"synthetic {name} (seed {seed}, {n_train} train, {n_test} test)",
                      checksum=synthetic_checksum(name, n_train, n_test, seed))
