"""FFCV loaders: bit-exact round trips, epoch ordering, distributed coverage (2 real processes), errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from data.encode import SPLITS, manifest_path, prepare_dataset, resize_images, split_train_val
from data.errors import DataError
from data.loaders import QUASI_RANDOM, RANDOM, loader_memory, make_loader, set_loader_epoch, training_order
from data.sources import make_synthetic
from helpers import load_raw, read_raw

CPU = torch.device("cpu")
N_TRAIN, N_TEST = 121, 45  # synthetic: val = 121 // 6 = 20, train = 101, test = 45 (odd: the sampler pads)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return {name: prepare_dataset(name, cache_dir=cache, synthetic=True, synthetic_train=N_TRAIN, synthetic_test=N_TEST)
            for name in ("mnist", "cifar10")}


def expected_splits(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = read_raw(make_synthetic(name, N_TRAIN, N_TEST))
    train_idx, val_idx = split_train_val(raw.train_labels, N_TRAIN // 6, seed=0)
    return {"train": (raw.train_images[train_idx], raw.train_labels[train_idx]),
            "val": (raw.train_images[val_idx], raw.train_labels[val_idx]),
            "test": (raw.test_images, raw.test_labels)}


def read_all(loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels, indices = [], [], []
    for x, y, i in loader:  # batches are reused buffers: clone what is kept
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and i.dtype == torch.int64
        assert x.device == CPU and x.shape[1:3] == (64, 64) and y.shape == i.shape == (len(x),)
        images.append(x.clone())
        labels.append(y.clone())
        indices.append(i.clone())
    return torch.cat(images).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_sequential_round_trip_is_bit_exact(synthetic, name):
    expected = expected_splits(name)
    for split in SPLITS:
        loader = make_loader(synthetic[name].paths[split], batch_size=16, train=False, device=CPU, num_workers=1)
        images, labels, indices = read_all(loader)
        assert np.array_equal(images, resize_images(expected[split][0]))  # (N, 64, 64, C) uint8, channels last
        assert np.array_equal(labels, expected[split][1])
        assert np.array_equal(indices, np.arange(len(labels)))


def test_train_order_follows_seed_and_epoch(synthetic):
    path, n, batch = synthetic["mnist"].paths["train"], 101, 16
    loader = make_loader(path, batch_size=batch, train=True, device=CPU, seed=5, num_workers=1)
    count = 96  # drop_last: six whole batches of 16 out of 101
    assert len(loader) == 6
    labels_by_index = expected_splits("mnist")["train"][1]
    seen = []
    for epoch in range(2):
        _, labels, indices = read_all(loader)
        assert np.array_equal(indices, np.random.default_rng(5 + epoch).permutation(n)[:count])
        assert np.array_equal(labels, labels_by_index[indices])
        seen.append(indices)
    assert not np.array_equal(seen[0], seen[1])
    set_loader_epoch(loader, 1)  # a resumed run continues with the same order
    assert np.array_equal(read_all(loader)[2], seen[1])


def _rank_main(rank: int, world: int, init_file: str, paths: dict[str, Path], out_dir: str) -> None:
    """One of two real processes: record what its distributed train and eval loaders yield."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train = make_loader(paths["train"], batch_size=8, train=True, device=CPU, seed=3, distributed=True,
                            num_workers=1, drop_last=False)
        dropping = make_loader(paths["train"], batch_size=8, train=True, device=CPU, seed=3, distributed=True,
                               num_workers=1)
        test = make_loader(paths["test"], batch_size=8, train=False, device=CPU, distributed=True, num_workers=1)
        result = {"train": [read_all(train)[2] for _ in range(2)], "train_len": len(train),
                  "dropping": read_all(dropping)[2], "dropping_len": len(dropping)}
        _, result["test_labels"], result["test_indices"] = read_all(test)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_cover_every_sample(synthetic, tmp_path):
    world, paths = 2, synthetic["cifar10"].paths
    mp.spawn(_rank_main, args=(world, str(tmp_path / "init"), paths, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    n_train, n_test = 101, N_TEST
    # DistributedSampler pads each split to a multiple of the world: 101 -> 2 x 51, 45 -> 2 x 23 (one repeat each).
    per_rank_train, per_rank_test = 51, 23

    for epoch in range(2):
        for rank, result in enumerate(ranks):  # DistributedSampler(shuffle, seed=3).set_epoch(epoch)
            sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True, seed=3)
            sampler.set_epoch(epoch)
            assert result["train"][epoch].tolist() == list(sampler)
        seen = np.concatenate([r["train"][epoch] for r in ranks])
        assert len(seen) == world * per_rank_train
        assert set(seen.tolist()) == set(range(n_train))  # every sample, once ...
        assert len(seen) - len(set(seen.tolist())) == world * per_rank_train - n_train  # ... plus the padding
    assert not np.array_equal(ranks[0]["train"][0], ranks[0]["train"][1])
    # Per rank, 51 samples in batches of 8: drop_last keeps 6 batches (48 samples), else 7 batches.
    assert all(r["dropping_len"] == 6 and len(r["dropping"]) == 48 for r in ranks)
    assert all(r["train_len"] == 7 for r in ranks)

    indices = np.concatenate([r["test_indices"] for r in ranks])
    labels = np.concatenate([r["test_labels"] for r in ranks])
    assert len(indices) == world * per_rank_test == n_test + 1
    unique, first = np.unique(indices, return_index=True)  # de-duplicate by index
    assert np.array_equal(unique, np.arange(n_test))
    assert np.array_equal(labels[first], expected_splits("cifar10")["test"][1])


def test_distributed_needs_a_process_group(synthetic):
    with pytest.raises(RuntimeError, match="process group"):
        make_loader(synthetic["mnist"].paths["test"], batch_size=8, train=False, device=CPU, distributed=True)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_damaged_beton_is_a_data_error(synthetic, tmp_path, damage):
    path = tmp_path / "x.beton"
    data = synthetic["cifar10"].paths["test"].read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError) as err:
        make_loader(path, batch_size=8, train=False, device=CPU)
    assert str(path) in str(err.value)


@pytest.fixture(scope="module")
def real_mnist(real_data_dir, tmp_path_factory):
    """All of genuine MNIST, encoded once for this module (about 10 s)."""
    cache = tmp_path_factory.mktemp("mnist-cache")
    return prepare_dataset("mnist", data_dir=real_data_dir, cache_dir=cache, download=False), cache


def test_real_mnist_encoding(real_mnist, real_data_dir, tmp_path):
    encoded, cache = real_mnist
    assert encoded.counts == {"train": 50_000, "val": 10_000, "test": 10_000}
    manifests = {s: json.loads(manifest_path(cache, "mnist", s).read_text()) for s in SPLITS}
    train_val = np.add(manifests["train"]["class_counts"], manifests["val"]["class_counts"])
    assert train_val.tolist() == MNIST_TRAIN_COUNTS

    raw = read_raw(load_raw("mnist", real_data_dir, tmp_path, download=False))
    loader = make_loader(encoded.paths["test"], batch_size=1000, train=False, device=CPU, num_workers=1)
    images, labels, indices = read_all(loader)
    assert labels[0] == 7 and np.array_equal(labels, raw.test_labels)
    assert np.array_equal(indices, np.arange(10_000))
    assert np.array_equal(images, resize_images(raw.test_images))


def test_the_training_order_follows_the_file_size_against_the_loaders_memory():
    gb = 10**9
    assert training_order(5 * gb, processes=1, memory_bytes=6 * gb) == (
        RANDOM, "it fits in the 6.0 GB the loader may use: page cache, random order")
    assert training_order(16 * gb, processes=1, memory_bytes=6 * gb) == (
        QUASI_RANDOM, "it exceeds the 6.0 GB the loader may use: read a few pages at a time, in quasi-random order, "
        "without the page cache")
    order, why = training_order(16 * gb, processes=8, memory_bytes=6 * gb)
    assert order == RANDOM and why.startswith("8 processes read it through the page cache")
    memory = loader_memory()  # three quarters of this machine's memory (or its cgroup's limit)
    assert 0 < memory <= 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.fixture(scope="module")
def paged(tmp_path_factory) -> Path:
    """A training file of several ffcv pages (2 MiB, ~170 64x64 RGB images each)."""
    cache = tmp_path_factory.mktemp("paged")
    return prepare_dataset("cifar10", cache_dir=cache, synthetic=True, synthetic_train=1200, synthetic_test=30).paths["train"]


def test_quasi_random_order_is_a_function_of_seed_and_epoch_so_a_resume_continues_it(paged):
    """ffcv's own quasi-random order would give a fresh loader (a resumed run) another epoch 1 than the loader that
    drew epoch 0 first: the run would train some images twice in that epoch and others not at all."""
    first = make_loader(paged, batch_size=16, train=True, device=CPU, seed=3, num_workers=1, order=QUASI_RANDOM)
    epochs = [read_all(first)[2] for _ in range(2)]
    assert len(first) == 1000 // 16 and all(len(set(e)) == len(e) == 16 * len(first) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[0], np.sort(epochs[0]))
    pages = np.diff(epochs[0][:32] // 170)  # quasi-random: a few pages at a time, not the whole file
    assert np.count_nonzero(pages) < 31

    resumed = make_loader(paged, batch_size=16, train=True, device=CPU, seed=3, num_workers=1, order=QUASI_RANDOM)
    set_loader_epoch(resumed, 1)
    batches = iter(resumed)
    for _ in range(5):  # the five batches trained before the run stopped
        next(batches)
    rest = torch.cat([indices.clone() for _, _, indices in batches]).numpy()
    assert np.array_equal(rest, epochs[1][5 * 16:])


def test_quasi_random_order_is_refused_in_distributed_mode(paged):
    with pytest.raises(DataError, match="quasi-random order does not run distributed"):
        make_loader(paged, batch_size=16, train=True, device=CPU, distributed=True, order=QUASI_RANDOM)
