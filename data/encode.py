"""Encode raw datasets into 64x64 FFCV .beton files (train / val / test), cached with a manifest each and rebuilt
only when the recipe changed; streamed in chunks, written whole, one build per dataset under a lock (docs/design.md).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from filelock import FileLock
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from common.files import DiskFull, sha256_files, write_json_atomic
from data.datasets import DatasetSpec, get_spec
from data.errors import DataError
from data.formats import Chunk, OfficialSplit
from data.sources import RawDataset, locate_source, make_synthetic, read_source, source_checksums, synthetic_checksum
from data.writer import (IMAGE_SIZE, Batch, beton_fields, check_beton, validate_batch, write_fields,
                         write_timeout_s)

SPLITS = ("train", "val", "test")
SYNTHETIC_VAL_DIVISOR = 6  # synthetic data: val = n_train // 6 of the synthetic training set
CACHE_DIR_ENV = "DEEPNETS_CACHE_DIR"
MANIFEST_VERSION = 2  # 2: sources streamed in chunks, checksums over each file's sha256, val held out per class
RESIZE_METHOD = "torchvision.transforms.v2.functional.resize(uint8, bilinear, antialias=True), = PIL bilinear"
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2_400, 400  # CPU-smoke-sized defaults (train includes val)
SYNTHETIC_PER_CLASS = (4, 1)  # at least this many synthetic train(+val) and test images per class: each split has each
# How pixels are stored, in every manifest. Raw over JPEG q90 from Tiny ImageNet's 90,000 training images on 2 CPU
# cores (docs/results.md): exact pixels (no second JPEG generation; PSNR 37.8 dB at q90), loading 25 % faster
# (49,897 against 40,094 img/s), encoding as fast, at 4.7x the size (1.12 against 0.24 GB; ImageNet 64x64: ~15 GB).
STORAGE = {"pixels": "raw uint8", "provisional": "chosen from encode rate, file size and load rate on 2 CPU cores; "
           "a GPU box's loader may call for JPEG (scripts/bench_storage.py measures it there)"}


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


# ---------------------------------------------------------------- split, resize, and the stream of batches

def synthetic_sizes(name: str, n_train: int, n_test: int) -> tuple[int, int]:
    """Default synthetic train(+val) and test sizes, grown to SYNTHETIC_PER_CLASS images of each of the dataset's
    classes."""
    classes = get_spec(name).num_classes
    return max(n_train, SYNTHETIC_PER_CLASS[0] * classes), max(n_test, SYNTHETIC_PER_CLASS[1] * classes)


def synthetic_val_size(n_train: int) -> int:
    """Images of a synthetic training set held out for validation (the rest is the train split)."""
    return n_train // SYNTHETIC_VAL_DIVISOR


def resize_images(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, h, w, C) uint8 -> (N, size, size, C) uint8, bilinear with antialiasing (images already that size pass
    unchanged, as the resize would leave them).

    torchvision's uint8 path gives bit-for-bit what the study's `transforms.Resize` did to its PIL images.
    """
    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = TF.resize(chw, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def split_train_val(labels: np.ndarray, val_size: int, seed: int, classes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and val images within the official training set, each in original order: a random
    `val_size` of them, or given the number of `classes` a random val_size / classes of each class."""
    n = len(labels)
    if not 0 < val_size < n:
        raise DataError(f"training set has {n} images; expected more than the {val_size} held out for validation")
    perm = np.random.default_rng(seed).permutation(n)
    if not classes:
        return np.sort(perm[val_size:]), np.sort(perm[:val_size])
    counts = np.bincount(labels, minlength=classes)
    each, rest = divmod(val_size, classes)
    if rest or counts.min() <= each:
        raise DataError(f"training set has {counts.min()} to {counts.max()} images per class; expected more than "
                        f"the {val_size / classes:g} of each of the {classes} held out for validation")
    by_class = perm[np.argsort(labels[perm], kind="stable")]  # each class's positions, in random order
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.sort(by_class[rank >= each]), np.sort(by_class[rank < each])


def encoding_workers() -> int:
    """Threads decoding and resizing: the CPUs this process may use (it encodes while other ranks wait)."""
    return len(os.sched_getaffinity(0))


def ahead(function: Callable, items: Iterator, workers: int) -> Iterator:
    """`map(function, items)` on `workers` threads, in order, at most 2 x workers results ahead of the reader."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batches(split: OfficialSplit, keep: np.ndarray, num_classes: int, where: str) -> Iterator[Batch]:
    """The images at positions `keep` of an official split, decoded, resized and checked on worker threads (torch
    one thread each), in order."""

    def ready(chunk: Chunk) -> Batch:
        images = resize_images(chunk.pixels())
        validate_batch(images, chunk.labels, num_classes, where)
        return images, chunk.labels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield from ahead(ready, split.chunks(keep), encoding_workers())
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- manifests and the cache

def _recipe(key: str, split: str, spec: DatasetSpec, checksum: str, val_size: int) -> dict[str, Any]:
    """Everything that determines a .beton's content: a cached file is reused only if this matches."""
    image_field = "RGBImageField(raw, max_resolution=64)" if spec.channels == 3 else "NDArrayField(uint8, (64, 64, 1))"
    return {
        "manifest_version": MANIFEST_VERSION, "key": key, "split": split, "source_checksum": checksum,
        "shape": [IMAGE_SIZE, IMAGE_SIZE, spec.channels], "resize": RESIZE_METHOD,
        "fields": {"image": image_field, "label": "IntField", "index": "IntField (position in this split)"},
        "split_seed": spec.split_seed, "val_size": val_size, "val_per_class": spec.val_per_class,
        "mean": list(spec.mean), "std": list(spec.std),
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


def beton_bytes(count: int, channels: int) -> int:
    """About how large a raw .beton of `count` images is: their pixels, ffcv's per-sample metadata and allocation
    table, and the last page."""
    return count * (IMAGE_SIZE * IMAGE_SIZE * channels + 64) + (4 << 20)


def train_file_bytes(name: str, synthetic_train: int | None = None) -> int:
    """About how large a dataset's train .beton is (synthetic: of that many train+val images), before it exists."""
    spec = get_spec(name)
    count = spec.train_size if synthetic_train is None else synthetic_train - synthetic_split_val(spec, synthetic_train)
    return beton_bytes(count, spec.channels)


def _check_free_space(cache_dir: Path, key: str, counts: dict[str, int], channels: int) -> None:
    """One line before a byte is written when the splits to encode cannot fit beside what is there."""
    needed, free = sum(beton_bytes(n, channels) for n in counts.values()), shutil.disk_usage(cache_dir).free
    if needed > free:
        raise DiskFull(f"{cache_dir}: encoding {key} ({', '.join(counts)}) needs about {needed / 1e9:,.2f} GB and "
                       f"{free / 1e9:,.2f} GB are free there; free some space (or choose another --cache-dir) "
                       "and run again; nothing was written")


def _remove_leftovers(cache_dir: Path, key: str) -> None:
    """Temporary files of this dataset's splits that a killed encode left (the caller holds the dataset's lock, so
    no live process is writing them)."""
    for split in SPLITS:
        for name in (beton_path(cache_dir, key, split).name, manifest_path(cache_dir, key, split).name):
            for leftover in Path(cache_dir).glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)


def _write_split(cache_dir: Path, key: str, split: str, recipe: dict[str, Any], raw: RawDataset,
                 official: OfficialSplit, keep: np.ndarray) -> int:
    """Stream one split into its .beton, then write its manifest: a manifest names only a whole file."""
    spec, beton = raw.spec, beton_path(cache_dir, key, split)
    labels = official.labels[keep]
    write_fields(beton, beton_fields(spec.channels), len(keep),
                 batches(official, keep, spec.num_classes, raw.origin), write_timeout_s(len(keep)),
                 desc=f"{key} {split}")
    manifest = {
        "recipe": recipe, "origin": raw.origin, "count": int(len(keep)),
        "class_counts": np.bincount(labels, minlength=spec.num_classes).tolist(), "storage": STORAGE,
        "beton": {"file": beton.name, "size": beton.stat().st_size, "sha256": sha256_files([beton])},
    }
    write_json_atomic(manifest_path(cache_dir, key, split), manifest)
    return len(keep)


@dataclass
class EncodedDataset:
    key: str  # "mnist", "cifar10", "mnist-synthetic", ...
    spec: DatasetSpec
    paths: dict[str, Path]  # split -> .beton
    counts: dict[str, int]  # split -> number of images
    written: tuple[str, ...] = field(default=())  # splits (re)encoded by this call; the rest were cached


def synthetic_split_val(spec: DatasetSpec, n_train: int) -> int:
    """The validation size of synthetic data: a sixth, in whole images per class where the entry holds out per class."""
    val = synthetic_val_size(n_train)
    return max(1, val // spec.num_classes) * spec.num_classes if spec.val_per_class else val


def prepare_dataset(name: str, *, data_dir: Path | None = None, cache_dir: Path | None = None,
                    synthetic: bool = False, synthetic_train: int | None = None,
                    synthetic_test: int | None = None, download: bool = True) -> EncodedDataset:
    """Make sure `{key}_{split}_64.beton` exist and are current for every split; encode only what is not.

    Safe to call from several processes, jobs or machines at once on one cache folder: a warm cache is
    read without a lock (the source's checksum is remembered by path, size and mtime, so a warm start
    reads no source file); otherwise the source is opened and its labels checked, then the dataset's
    lock taken and the cache checked again, so only the first holder encodes and the others find its
    files. The source is opened before the lock so that a source that cannot be read leaves nothing in
    the cache, not even a lock file; a file found damaged while streaming leaves no part of a split.
    """
    spec = get_spec(name)
    defaults = synthetic_sizes(name, SYNTHETIC_TRAIN, SYNTHETIC_TEST)  # what sizes not given are
    synthetic_train, synthetic_test = synthetic_train or defaults[0], synthetic_test or defaults[1]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cache directory {cache}: cannot create it ({e.strerror}); expected a writable directory") from None
    key = dataset_key(spec.name, (synthetic_train, synthetic_test) if synthetic else None)
    load: Callable[[], RawDataset]
    checksums = None
    if synthetic:
        checksum = synthetic_checksum(spec.name, synthetic_train, synthetic_test, 0)
        load = partial(make_synthetic, spec.name, synthetic_train, synthetic_test)
        val_size = synthetic_split_val(spec, synthetic_train)
    else:
        source, checksums = locate_source(spec.name, data_dir, cache, download), source_checksums(cache)
        checksum = checksums.digest(source.paths)
        load, val_size = partial(read_source, spec, source, checksum), spec.val_size

    recipes = {split: _recipe(key, split, spec, checksum, val_size) for split in SPLITS}
    counts = _cached_counts(cache, key, recipes)
    stale: tuple[str, ...] = ()
    if None in counts.values():
        raw = load()
        train, val = split_train_val(raw.train.labels, val_size, spec.split_seed,
                                     spec.num_classes if spec.val_per_class else 0)
        parts = {"train": (raw.train, train), "val": (raw.train, val), "test": (raw.test, np.arange(len(raw.test.labels)))}
        with FileLock(lock_path(cache, key)):
            counts = _cached_counts(cache, key, recipes)  # another holder may have encoded them meanwhile
            stale = tuple(split for split in SPLITS if counts[split] is None)
            if stale:
                _remove_leftovers(cache, key)
                _check_free_space(cache, key, {split: len(parts[split][1]) for split in stale}, spec.channels)
                for split in stale:
                    counts[split] = _write_split(cache, key, split, recipes[split], raw, *parts[split])
    if checksums is not None:
        checksums.save()  # the source proved whole (or its files were cached): remember its checksum
    return EncodedDataset(key, spec, {s: beton_path(cache, key, s) for s in SPLITS},
                          {s: int(c) for s, c in counts.items() if c is not None}, stale)
