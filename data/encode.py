"""Encode raw datasets into 64x64 FFCV .beton files (train / val / test), cached with a manifest each.

A .beton is reused only when its manifest's recipe equals what would be written now (same source
checksum, split, resize, library versions...) and the file passes a structural check; otherwise it is
rebuilt. Files are written under a temporary name and moved into place with os.replace, so a reader
never sees a half-written file, and a build holds a lock file per dataset in the cache folder, so that
processes, jobs or machines sharing one cache build each dataset once: the others wait and find it warm.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from filelock import FileLock
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data.datasets import DatasetSpec, get_spec
from data.errors import DataError
from common.files import atomic_write, sha256_files, write_json_atomic
from data.sources import RawDataset, locate_source, make_synthetic, read_source, synthetic_checksum

IMAGE_SIZE = 64
SPLITS = ("train", "val", "test")
FIELD_NAMES = ("image", "label", "index")
SYNTHETIC_VAL_DIVISOR = 6  # synthetic data: val = n_train // 6 of the synthetic training set
CACHE_DIR_ENV = "DEEPNETS_CACHE_DIR"
MANIFEST_VERSION = 1
RESIZE_METHOD = "torchvision.transforms.v2.functional.resize(uint8, bilinear, antialias=True), = PIL bilinear"
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2_400, 400  # CPU-smoke-sized defaults (train includes val)
WRITER_GRACE_S = 15.0  # how long the writer may take to finish after its worker exited


def default_cache_dir() -> Path:
    """$DEEPNETS_CACHE_DIR, else the git-ignored data/cache/ next to this package."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "cache"


def dataset_key(name: str, synthetic_sizes: tuple[int, int] | None = None) -> str:
    """File-name stem: the dataset, or for synthetic data the dataset and its sizes (so that different
    sizes never overwrite each other's files)."""
    if synthetic_sizes is None:
        return name
    return f"{name}-synthetic-{synthetic_sizes[0]}x{synthetic_sizes[1]}"


def beton_path(cache_dir: Path, key: str, split: str) -> Path:
    return Path(cache_dir) / f"{key}_{split}_{IMAGE_SIZE}.beton"


def manifest_path(cache_dir: Path, key: str, split: str) -> Path:
    return beton_path(cache_dir, key, split).with_suffix(".json")


def lock_path(cache_dir: Path, key: str) -> Path:
    """The lock a build of dataset `key` holds. It stays after the build: flock waiters share its inode."""
    return Path(cache_dir) / f"{key}.lock"


# ---------------------------------------------------------------- arrays: resize and split

def synthetic_val_size(n_train: int) -> int:
    """Images of a synthetic training set held out for validation (the rest is the train split)."""
    return n_train // SYNTHETIC_VAL_DIVISOR


def resize_images(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, h, w, C) uint8 -> (N, size, size, C) uint8, bilinear with antialiasing.

    torchvision's uint8 path gives bit-for-bit what the study's `transforms.Resize` did to its PIL images.
    """
    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = TF.resize(chw, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and val images within the official training set, each in original order."""
    if not 0 < val_size < n:
        raise DataError(f"training set has {n} images; expected more than the {val_size} held out for validation")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _split_arrays(raw: RawDataset, val_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train_idx, val_idx = split_train_val(len(raw.train_labels), val_size, raw.spec.split_seed)
    return {
        "train": (raw.train_images[train_idx], raw.train_labels[train_idx]),
        "val": (raw.train_images[val_idx], raw.train_labels[val_idx]),
        "test": (raw.test_images, raw.test_labels),
    }


# ---------------------------------------------------------------- writing and checking .beton files

def beton_fields(channels: int) -> dict[str, Any]:
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    image = (RGBImageField(write_mode="raw", max_resolution=IMAGE_SIZE) if channels == 3
             else NDArrayField(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.dtype("uint8")))
    return {"image": image, "label": IntField(), "index": IntField()}


@dataclass
class _Samples:
    """What DatasetWriter indexes: (image HxWxC, label, position in this split)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), int(i)


def _validate_samples(images: np.ndarray, labels: np.ndarray, num_classes: int, where: Path) -> None:
    """Catch in the parent what would make a writer worker raise (and the writer hang forever)."""
    ok_shape = images.ndim == 4 and images.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE) and images.shape[3] in (1, 3)
    if images.dtype != np.uint8 or not ok_shape or len(images) == 0:
        raise DataError(f"{where}: images are {images.dtype} {images.shape}; expected uint8 (N>0, {IMAGE_SIZE}, {IMAGE_SIZE}, 1 or 3)")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels are {labels.dtype} {labels.shape}; expected integers ({len(images)},)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{where}: labels span {labels.min()}..{labels.max()}; expected 0..{num_classes - 1}")


def write_timeout_s(n: int) -> float:
    """Generous bound on one write (a few thousand images/s is typical even on a busy 2-core machine)."""
    return 120.0 + n / 200


def _writer_host(writer: Any, samples: Any, report: Any) -> None:
    """Runs in a forked child, in its own process group, so that the parent can always stop it.

    ffcv's writer waits forever when a worker dies, so a watchdog thread ends this process once every
    worker has exited but the writer has not returned; the parent also enforces an overall timeout.
    """
    from multiprocessing import shared_memory

    os.setpgid(0, 0)

    def abort(message: str) -> None:
        shm = getattr(writer, "metadata_sm", None)
        if isinstance(shm, shared_memory.SharedMemory):
            with contextlib.suppress(FileNotFoundError):  # ffcv would leak it in /dev/shm
                shm.unlink()
        report.send(message)
        os._exit(3)

    signal.signal(signal.SIGTERM, lambda *_: abort("timed out"))

    def watchdog() -> None:
        idle = 0.0  # time the writer has been set up (shared memory exists) with no live worker
        while idle < WRITER_GRACE_S:  # a healthy writer finishes within moments of its worker exiting
            time.sleep(0.2)
            started = isinstance(getattr(writer, "metadata_sm", None), shared_memory.SharedMemory)
            idle = idle + 0.2 if started and not multiprocessing.active_children() else 0.0
        abort("an ffcv writer worker failed (see its traceback above)")

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        writer.from_indexed_dataset(samples, chunksize=256)
    except Exception as e:  # reported as one line by the parent
        abort(f"{e.__class__.__name__}: {e}")
    os._exit(0)


def write_fields(path: Path, fields: dict[str, Any], samples: Any, timeout_s: float) -> None:
    """Write `samples` to `path` atomically, bounded by `timeout_s`; DataError (and no file) on failure."""
    atomic_write(Path(path), partial(_write_in_child, fields=fields, samples=samples, timeout_s=timeout_s, path=path))


def _write_in_child(tmp: Path, *, fields: dict[str, Any], samples: Any, timeout_s: float, path: Path) -> None:
    from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter

    # One worker makes the output byte-identical for identical input (several race for pages);
    # 2 MiB pages (ffcv's minimum, default 8) hold ~160 64x64x3 images and keep small files small.
    writer = DatasetWriter(str(tmp), fields, page_size=MIN_PAGE_SIZE, num_workers=1)
    ctx = multiprocessing.get_context("fork")  # writer and samples are inherited, not pickled
    receive, send = ctx.Pipe(duplex=False)
    host = ctx.Process(target=_writer_host, args=(writer, samples, send))
    try:
        host.start()
        host.join(timeout_s)
        if host.exitcode != 0:
            _stop(host)
            reason = receive.recv() if receive.poll() else f"writer exited with code {host.exitcode}"
            raise DataError(f"{path}: writing the .beton failed ({reason}); nothing was written")
    finally:
        if host.pid is not None and host.exitcode is None:  # interrupted while waiting
            _stop(host)
        receive.close()
        send.close()


def _stop(host: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM first (the host then frees ffcv's shared memory), then SIGKILL its whole process group."""
    if host.exitcode is None:
        host.terminate()
        host.join(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(host.pid, signal.SIGKILL)  # and the worker it may leave behind
    host.join()


def write_beton(path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int,
                timeout_s: float | None = None) -> None:
    """Validate then write (N, 64, 64, C) uint8 images with labels and per-split indices 0..N-1."""
    _validate_samples(images, labels, num_classes, path)
    timeout = write_timeout_s(len(labels)) if timeout_s is None else timeout_s
    write_fields(path, beton_fields(images.shape[3]), _Samples(images, labels), timeout)


def check_beton(path: Path, expected_count: int | None = None) -> int:
    """Structural check of a .beton (ffcv's own reader plus bounds): its sample count, else DataError.

    A truncated file can otherwise make the loader read past the end of its memory map.
    """
    from ffcv.reader import Reader

    path = Path(path)
    hint = "delete it and run `python -m data.prepare` again"
    if not path.is_file():
        raise DataError(f"{path}: no such .beton file; run `python -m data.prepare` to create it")
    size = path.stat().st_size
    try:
        reader = Reader(str(path))
        names = list(reader.handlers)
        n = int(reader.num_samples)
        table_ptr = int(reader.header["alloc_table_ptr"])
        table = reader.alloc_table
        data_end = (table["ptr"] + table["size"]).max(initial=0)
    except Exception as e:  # ffcv raises assorted errors on garbage input
        raise DataError(f"{path}: not a readable FFCV .beton ({e.__class__.__name__}: {e}); {hint}") from None
    if names != list(FIELD_NAMES):
        raise DataError(f"{path}: fields {names}; expected {list(FIELD_NAMES)}; {hint}")
    intact = (len(reader.metadata) == n and table_ptr + table.nbytes == size and data_end <= table_ptr
              and len(table) == n and np.array_equal(np.unique(table["sample_id"]), np.arange(n)))
    if not intact:
        raise DataError(f"{path}: truncated or corrupt .beton ({size} bytes, header says {n} samples); {hint}")
    if expected_count is not None and n != expected_count:
        raise DataError(f"{path}: holds {n} samples; expected {expected_count}; {hint}")
    return n


# ---------------------------------------------------------------- manifests and the cache

def _recipe(key: str, split: str, spec: DatasetSpec, checksum: str, val_size: int) -> dict[str, Any]:
    """Everything that determines a .beton's content: a cached file is reused only if this matches."""
    image_field = "RGBImageField(raw, max_resolution=64)" if spec.channels == 3 else "NDArrayField(uint8, (64, 64, 1))"
    return {
        "manifest_version": MANIFEST_VERSION, "key": key, "split": split, "source_checksum": checksum,
        "shape": [IMAGE_SIZE, IMAGE_SIZE, spec.channels], "resize": RESIZE_METHOD,
        "fields": {"image": image_field, "label": "IntField", "index": "IntField (position in this split)"},
        "split_seed": spec.split_seed, "val_size": val_size, "mean": list(spec.mean), "std": list(spec.std),
        "ffcv_version": version("ffcv"), "torchvision_version": version("torchvision"),
    }


def _cached_count(cache_dir: Path, key: str, split: str, recipe: dict[str, Any]) -> int | None:
    """The sample count of a reusable cached split, or None when it must be (re)built."""
    try:
        manifest = json.loads(manifest_path(cache_dir, key, split).read_text())
        beton = beton_path(cache_dir, key, split)
        if manifest["recipe"] != recipe or beton.stat().st_size != manifest["beton"]["size"]:
            return None
        return check_beton(beton, manifest["count"])
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None


def _cached_counts(cache_dir: Path, key: str, recipes: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    return {split: _cached_count(cache_dir, key, split, recipes[split]) for split in SPLITS}


def _write_split(cache_dir: Path, key: str, split: str, recipe: dict[str, Any], spec: DatasetSpec,
                 images: np.ndarray, labels: np.ndarray, origin: str) -> int:
    beton = beton_path(cache_dir, key, split)
    write_beton(beton, resize_images(images), labels, spec.num_classes)
    manifest = {
        "recipe": recipe, "origin": origin, "count": int(len(labels)),
        "class_counts": np.bincount(labels, minlength=spec.num_classes).tolist(),
        "beton": {"file": beton.name, "size": beton.stat().st_size, "sha256": sha256_files([beton])},
    }
    write_json_atomic(manifest_path(cache_dir, key, split), manifest)
    return len(labels)


@dataclass
class EncodedDataset:
    key: str  # "mnist", "cifar10", "mnist-synthetic", ...
    spec: DatasetSpec
    paths: dict[str, Path]  # split -> .beton
    counts: dict[str, int]  # split -> number of images
    written: tuple[str, ...] = field(default=())  # splits (re)encoded by this call; the rest were cached


def prepare_dataset(name: str, *, data_dir: Path | None = None, cache_dir: Path | None = None,
                    synthetic: bool = False, synthetic_train: int = SYNTHETIC_TRAIN,
                    synthetic_test: int = SYNTHETIC_TEST, download: bool = True) -> EncodedDataset:
    """Make sure `{key}_{split}_64.beton` exist and are current for every split; encode only what is not.

    Safe to call from several processes, jobs or machines at once on one cache folder: a warm cache is
    read without a lock; otherwise the source is read, then the dataset's lock taken and the cache checked
    again, so only the first holder encodes and the others find its files. The source is read before the
    lock so that a source that cannot be read leaves nothing in the cache, not even a lock file.
    """
    spec = get_spec(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cache directory {cache}: cannot create it ({e.strerror}); expected a writable directory") from None
    key = dataset_key(spec.name, (synthetic_train, synthetic_test) if synthetic else None)
    load: Callable[[], RawDataset]
    if synthetic:
        checksum = synthetic_checksum(spec.name, synthetic_train, synthetic_test, 0)
        load = partial(make_synthetic, spec.name, synthetic_train, synthetic_test)
        val_size = synthetic_val_size(synthetic_train)
    else:
        source = locate_source(spec.name, data_dir, cache, download)
        checksum, load, val_size = source.checksum, partial(read_source, spec, source), spec.val_size

    recipes = {split: _recipe(key, split, spec, checksum, val_size) for split in SPLITS}
    counts = _cached_counts(cache, key, recipes)
    stale: tuple[str, ...] = ()
    if None in counts.values():
        raw = load()
        with FileLock(lock_path(cache, key)):
            counts = _cached_counts(cache, key, recipes)  # another holder may have encoded them meanwhile
            stale = tuple(split for split in SPLITS if counts[split] is None)
            if stale:
                arrays = _split_arrays(raw, val_size)
                for split in stale:
                    counts[split] = _write_split(cache, key, split, recipes[split], spec, *arrays[split], raw.origin)
    return EncodedDataset(key, spec, {s: beton_path(cache, key, s) for s in SPLITS},
                          {s: int(c) for s, c in counts.items() if c is not None}, stale)
