"""Encoding to .beton: splits, resize, manifests, the cache, bounded/atomic writes and the prepare CLI."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.datasets import DATASETS, dataset_names, get_spec, register_dataset
import data.encode as encode
from data.encode import (SPLITS, beton_path, manifest_path, prepare_dataset, resize_images, split_train_val,
                         synthetic_sizes)
from data.errors import DataError
import data.formats as formats
from data.prepare import main as prepare_main, parse_args
import data.writer as writer
from data.writer import beton_fields, check_beton, validate_batch, write_fields, write_timeout_s
from test_sources import write_mnist

REPO = Path(__file__).resolve().parents[1]
SMALL = {"synthetic_train": 120, "synthetic_test": 30}  # -> train 100, val 20, test 30


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def write_beton(path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int,
                timeout_s: float | None = None) -> None:
    """Validate, then write (N, 64, 64, C) uint8 images held in memory in one chunk, as an encode writes each."""
    validate_batch(images, labels, num_classes, path)
    timeout = write_timeout_s(len(labels)) if timeout_s is None else timeout_s
    write_fields(path, beton_fields(images.shape[3]), len(labels), [(images, labels)], timeout)


def shm_segments() -> set[str]:
    """Python's SharedMemory segments (ffcv's writer makes one, named psm_*)."""
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


def shm_released(before: set[str], wait_s: float = 30.0) -> bool:
    """Whether /dev/shm holds no segment that `before` lacked: waits out another test worker's encode (its segments
    come and go), so only a leaked one stays."""
    deadline = time.monotonic() + wait_s
    while not shm_segments() <= before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_split_is_fixed_disjoint_and_ordered():
    labels = np.arange(60) % 10
    train, val = split_train_val(labels, 10, seed=0)
    assert len(train) == 50 and len(val) == 10
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(60))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again = split_train_val(labels, 10, seed=0)
    assert not np.array_equal(val, split_train_val(labels, 10, seed=1)[1])  # the dataset entry's seed decides
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    with pytest.raises(DataError, match="more than the 10"):
        split_train_val(labels[:10], 10, seed=0)


def test_split_per_class_holds_out_each_class_evenly():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(200), [7] * 150 + [3] * 50))
    train, val = split_train_val(labels, 400, seed=0, classes=200)
    assert np.bincount(labels[val], minlength=200).tolist() == [2] * 200
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels) and np.all(np.diff(val) > 0)
    assert np.array_equal(val, split_train_val(labels, 400, seed=0, classes=200)[1])
    assert not np.array_equal(val, split_train_val(labels, 400, seed=1, classes=200)[1])
    with pytest.raises(DataError, match=r"3 to 7 images per class; expected more than the 3 of each of the 200"):
        split_train_val(labels, 600, seed=0, classes=200)
    with pytest.raises(DataError, match="expected more than the 0.5 of each"):
        split_train_val(labels, 100, seed=0, classes=200)


@pytest.mark.parametrize("native,channels", [(28, 1), (32, 3)])
def test_resize_equals_the_studys_pil_resize(native, channels):
    """torchvision's Resize((64, 64)) on the study's PIL images is PIL's bilinear resize: bit-identical."""
    images = np.random.default_rng(0).integers(0, 256, (3, native, native, channels), dtype=np.uint8)
    out = resize_images(images)
    assert out.shape == (3, 64, 64, channels) and out.dtype == np.uint8 and out.flags.c_contiguous
    for image, resized in zip(images, out):
        pil = Image.fromarray(image[..., 0] if channels == 1 else image).resize((64, 64), Image.BILINEAR)
        assert np.array_equal(np.asarray(pil).reshape(64, 64, channels), resized)


@pytest.mark.parametrize("name,channels", [("mnist", 1), ("cifar10", 3)])
def test_prepare_writes_files_and_manifests(tmp_path, name, channels):
    encoded = prepare_dataset(name, cache_dir=tmp_path, synthetic=True, **SMALL)
    assert encoded.key == f"{name}-synthetic-120x30" and encoded.written == SPLITS
    assert encoded.counts == {"train": 100, "val": 20, "test": 30}
    for split in SPLITS:
        path = encoded.paths[split]
        assert path == tmp_path / f"{name}-synthetic-120x30_{split}_64.beton"
        assert check_beton(path) == encoded.counts[split]
        manifest = json.loads(manifest_path(tmp_path, encoded.key, split).read_text())
        assert manifest["count"] == encoded.counts[split] == sum(manifest["class_counts"])
        assert manifest["recipe"]["shape"] == [64, 64, channels]
        assert manifest["recipe"]["ffcv_version"] == "1.0.2"
        assert manifest["storage"]["pixels"] == "raw uint8" and "provisional" in manifest["storage"]
        assert manifest["beton"]["size"] == path.stat().st_size
        assert manifest["beton"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not leftovers(tmp_path)


def test_cache_is_reused_and_a_truncated_file_rebuilt(tmp_path):
    first = prepare_dataset("mnist", cache_dir=tmp_path, synthetic=True, **SMALL)
    stamps = {s: p.stat().st_mtime_ns for s, p in first.paths.items()}
    digest = hashlib.sha256(first.paths["train"].read_bytes()).hexdigest()

    second = prepare_dataset("mnist", cache_dir=tmp_path, synthetic=True, **SMALL)
    assert second.written == () and second.counts == first.counts
    assert {s: p.stat().st_mtime_ns for s, p in second.paths.items()} == stamps

    train = first.paths["train"]
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    third = prepare_dataset("mnist", cache_dir=tmp_path, synthetic=True, **SMALL)
    assert third.written == ("train",)
    assert hashlib.sha256(train.read_bytes()).hexdigest() == digest  # the writer is deterministic

    # a different synthetic size is a different dataset, with files of its own beside the first
    other = prepare_dataset("mnist", cache_dir=tmp_path, synthetic=True, synthetic_train=60, synthetic_test=30)
    assert other.written == SPLITS and other.paths["train"] != train and train.exists()


def test_decode_threads_leave_every_byte_as_it_was(tmp_path, monkeypatch):
    """Chunks are decoded and resized on several threads but reach the one writer in order: the file is the same
    whatever the number of threads."""
    monkeypatch.setattr(formats, "CHUNK", 16)  # train: 100 images in seven chunks
    digests = []
    for threads in (1, 3):
        monkeypatch.setattr(encode, "encoding_workers", lambda threads=threads: threads)
        encoded = prepare_dataset("cifar10", cache_dir=tmp_path / str(threads), synthetic=True, **SMALL)
        digests.append(hashlib.sha256(encoded.paths["train"].read_bytes()).hexdigest())
    assert digests[0] == digests[1]


@pytest.fixture
def small_mnist():
    """MNIST's entry with 5 validation images, for small files in its format (a plugin's dataclasses.replace)."""
    register_dataset(dataclasses.replace(get_spec("mnist"), name="small_mnist", val_size=5))
    yield "small_mnist"
    del DATASETS["small_mnist"]


def test_source_checksum_is_remembered_by_path_size_and_mtime(tmp_path, small_mnist):
    """A warm start reads no source file: bytes changed behind an unchanged size and mtime go unnoticed (the cache
    is trusted), a new mtime makes it hash the file again, which then rebuilds what came from it."""
    write_mnist(tmp_path / "d", np.random.default_rng(4), gz=False)
    cache = tmp_path / "cache"
    assert prepare_dataset(small_mnist, data_dir=tmp_path / "d", cache_dir=cache, download=False).written == SPLITS
    remembered = json.loads((cache / "source-checksums.json").read_text())
    labels = tmp_path / "d" / "t10k-labels-idx1-ubyte"
    assert remembered[str(labels.resolve())]["sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()

    stamp = labels.stat()
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10  # another label, same length
    labels.write_bytes(bytes(data))
    os.utime(labels, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert prepare_dataset(small_mnist, data_dir=tmp_path / "d", cache_dir=cache, download=False).written == ()

    os.utime(labels)  # now
    assert prepare_dataset(small_mnist, data_dir=tmp_path / "d", cache_dir=cache, download=False).written == SPLITS


@pytest.mark.slow
def test_concurrent_prepares_encode_once(tmp_path):
    """Two `python -m data.prepare` on one cold cache, as two jobs of an array would: the lock makes
    one encode while the other waits, then finds every split cached; neither damages the other's files."""
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: _prepare_cli("--datasets", "mnist", "--synthetic", "--cache-dir", str(tmp_path)),
                             range(2)))
    assert [result.returncode for result in done] == [0, 0], [result.stderr for result in done]
    statuses = sorted(sorted({line.split()[-1] for line in result.stdout.strip().splitlines()}) for result in done)
    assert statuses == [["(cached)"], ["(encoded)"]], [result.stdout for result in done]  # one encoded every split
    key = "mnist-synthetic-2400x400"  # the CLI's default synthetic sizes
    assert [check_beton(beton_path(tmp_path, key, split)) for split in SPLITS] == [2000, 400, 400]
    assert not leftovers(tmp_path)


def test_damaged_manifest_triggers_a_rebuild(tmp_path):
    encoded = prepare_dataset("cifar10", cache_dir=tmp_path, synthetic=True, **SMALL)
    manifest_path(tmp_path, encoded.key, "val").write_text("{not json")
    assert prepare_dataset("cifar10", cache_dir=tmp_path, synthetic=True, **SMALL).written == ("val",)


def _damaged(tmp_path: Path, how: str) -> Path:
    encoded = prepare_dataset("mnist", cache_dir=tmp_path, synthetic=True, **SMALL)
    path = encoded.paths["test"]
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-4096])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # garbage header
        path.write_bytes(b"\xff" * 64 + data[64:])
    return path


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_check_beton_rejects_damaged_files(tmp_path, how):
    path = _damaged(tmp_path, how)
    with pytest.raises(DataError) as err:
        check_beton(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_check_beton_missing_and_wrong_count(tmp_path):
    with pytest.raises(DataError, match="no such .beton"):
        check_beton(tmp_path / "nope.beton")
    encoded = prepare_dataset("mnist", cache_dir=tmp_path, synthetic=True, **SMALL)
    with pytest.raises(DataError, match="expected 31"):
        check_beton(encoded.paths["test"], expected_count=31)


def test_write_beton_validates_before_writing(tmp_path):
    target = tmp_path / "x.beton"
    labels = np.zeros(4, np.int64)
    with pytest.raises(DataError, match="expected uint8"):
        write_beton(target, np.zeros((4, 64, 64, 1), np.float32), labels, 10)
    with pytest.raises(DataError, match="expected uint8"):
        write_beton(target, np.zeros((4, 32, 32, 3), np.uint8), labels, 10)
    with pytest.raises(DataError, match=r"expected 0\.\.9"):
        write_beton(target, np.zeros((4, 64, 64, 1), np.uint8), np.array([0, 1, 2, 10]), 10)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_writer_worker_is_reported_not_hung(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "WRITER_GRACE_S", 1.0)
    before = shm_segments()
    start = time.monotonic()
    good, bad = np.zeros((5, 64, 64, 1), np.uint8), np.zeros((5, 32, 32, 1), np.uint8)  # the 6th raises in the worker
    labels = np.zeros(5, np.int64)
    with pytest.raises(DataError, match="writing the .beton failed") as err:
        write_fields(tmp_path / "x.beton", writer.beton_fields(1), 10, [(good, labels), (bad, labels)], timeout_s=120)
    assert time.monotonic() - start < 60
    assert str(tmp_path / "x.beton") in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no temp file, no half-written .beton
    assert shm_released(before)  # ffcv's shared memory was released


def test_write_timeout_kills_the_writer(tmp_path):
    # timeout_s=0 gives up at once: the writer is terminated and nothing is left behind
    with pytest.raises(DataError, match="timed out|writer exited"):
        write_beton(tmp_path / "x.beton", np.zeros((10, 64, 64, 3), np.uint8), np.zeros(10, np.int64), 10, timeout_s=0)
    time.sleep(0.5)
    assert list(tmp_path.iterdir()) == []


def test_prepare_failure_leaves_no_files(tmp_path):
    bad = tmp_path / "mnist"
    bad.mkdir()
    for base in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / base).write_bytes(b"\x00" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="magic number 0"):
        prepare_dataset("mnist", data_dir=bad, cache_dir=cache, download=False)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def _prepare_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DEEPNETS_DATA_DIR", "DEEPNETS_CACHE_DIR")}
    return subprocess.run([sys.executable, "-m", "data.prepare", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_prepare_cli_reports_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DEEPNETS_DATA_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    assert prepare_main(["--datasets", "mnist", "--data-dir", str(tmp_path / "empty"),
                         "--cache-dir", str(tmp_path / "cache"), "--no-download"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MNIST not found in") and "--data-dir" in lines[0]


def test_prepare_cli_lists_valid_dataset_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--datasets", "imagenet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'imagenet' (choose from 'mnist', 'cifar10'" in err
    assert all(f"'{name}'" in err for name in dataset_names())  # every registered dataset is offered


@pytest.mark.slow
def test_prepare_cli_encodes_and_lists_splits(tmp_path):
    result = _prepare_cli("--datasets", "cifar10", "--synthetic", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for split, line in zip(SPLITS, lines):
        path = beton_path(tmp_path, "cifar10-synthetic-2400x400", split)  # the default sizes
        assert line.startswith(str(path)) and "image,label,index" in line
        assert f"  {check_beton(path)} images" in line
        # each split's progress bar, named, with its rate (and, while it runs, its ETA)
        assert re.search(rf"cifar10-synthetic-2400x400 {split}: 100%.*{check_beton(path)}/{check_beton(path)} "
                         r"\[[0-9:]+<[0-9:]+, +[0-9.]+img/s\]", result.stderr), result.stderr


def _open_by_anyone(path: Path) -> bool:
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


@pytest.mark.slow
def test_a_killed_encode_leaves_nothing_a_later_run_could_take_for_whole(tmp_path):
    """SIGKILL (the OOM killer's way) in the middle of writing the train split: the writer's processes notice and
    go, no .beton or manifest of that split exists, and the next run encodes everything and leaves no temp file."""
    key = "cifar10-synthetic-6000x400"
    code = ("from data.encode import prepare_dataset; "
            f"prepare_dataset('cifar10', cache_dir={str(tmp_path)!r}, synthetic=True, synthetic_train=6000, "
            "synthetic_test=400)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.glob(f".{key}_train_64.beton.*.tmp") if p.stat().st_size > 4 << 20]:
            assert process.poll() is None and time.monotonic() < deadline, "the encode ended before it could be killed"
            time.sleep(0.05)
        (temp,) = tmp_path.glob(f".{key}_train_64.beton.*.tmp")
        process.kill()
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 30
    while _open_by_anyone(temp):  # ffcv's writer and its worker, orphaned
        assert time.monotonic() < deadline, "the writer's processes outlived the encode"
        time.sleep(0.2)
    assert not beton_path(tmp_path, key, "train").exists() and not manifest_path(tmp_path, key, "train").exists()
    encoded = prepare_dataset("cifar10", cache_dir=tmp_path, synthetic=True, synthetic_train=6000, synthetic_test=400)
    assert encoded.written == SPLITS and encoded.counts == {"train": 5000, "val": 1000, "test": 400}
    assert not leftovers(tmp_path)


def test_synthetic_data_holds_every_class_in_every_split(tmp_path):
    """Default synthetic sizes grow to 4 train+val and 1 test image of each class, and Tiny ImageNet's synthetic
    validation images are held out per class, as its real ones are."""
    assert synthetic_sizes("imagenet64", 2400, 400) == (4000, 1000) and synthetic_sizes("mnist", 2400, 400) == (2400, 400)
    encoded = prepare_dataset("tiny_imagenet", cache_dir=tmp_path, synthetic=True, synthetic_train=800,
                              synthetic_test=200)
    assert encoded.counts == {"train": 600, "val": 200, "test": 200}
    manifests = {split: json.loads(manifest_path(tmp_path, encoded.key, split).read_text()) for split in SPLITS}
    assert manifests["val"]["class_counts"] == manifests["test"]["class_counts"] == [1] * 200
