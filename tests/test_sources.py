"""Raw readers (idx, both CIFAR formats), the dataset registry, source lookup errors and the synthetic generator."""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data.datasets import DATASETS, get_spec
from data.errors import DataError
from data.sources import make_synthetic, synthetic_checksum
from helpers import load_raw, read_raw

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


# ---------------------------------------------------------------- helpers writing official formats

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    dims = array.shape[:3] if magic == 2051 else array.shape[:1]
    return np.array([magic, *dims], dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, rng: np.random.Generator, n_train: int = 30, n_test: int = 10,
                gz: bool = True) -> dict[str, np.ndarray]:
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train), "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test)}
    directory.mkdir(parents=True, exist_ok=True)
    for key, base in NAMES.items():
        data = idx_bytes(arrays[key], 2051 if key.endswith("images") else 2049)
        if gz:
            (directory / f"{base}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / base).write_bytes(data)
    return arrays


CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def cifar_batches(rng: np.random.Generator, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {b: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)) for b in CIFAR_BATCHES}


def cifar_file_bytes(images: np.ndarray, labels: np.ndarray, binary: bool) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane
    if binary:
        return b"".join(bytes([int(label)]) + row.tobytes() for label, row in zip(labels, planes))
    return pickle.dumps({b"batch_label": b"test", b"labels": [int(x) for x in labels], b"data": planes}, protocol=2)


def write_cifar(root: Path, batches: dict, binary: bool, as_tar: bool) -> Path:
    folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    (root / folder).mkdir(parents=True)
    for name, (images, labels) in batches.items():
        (root / folder / (name + (".bin" if binary else ""))).write_bytes(cifar_file_bytes(images, labels, binary))
    if not as_tar:
        return root / folder
    archive = root / ("cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / folder, arcname=folder)
    for f in (root / folder).iterdir():
        f.unlink()
    (root / folder).rmdir()
    return archive


# ---------------------------------------------------------------- specs and real MNIST

def test_get_spec_lists_valid_names():
    assert get_spec("cifar10").channels == 3 and get_spec("mnist").native_size == 28
    with pytest.raises(DataError, match="mnist, cifar10"):
        get_spec("imagenet")


def test_real_mnist_facts(real_data_dir, tmp_path):
    raw = read_raw(load_raw("mnist", real_data_dir, tmp_path, download=False))
    assert raw.train_images.shape == (60000, 28, 28, 1) and raw.test_images.shape == (10000, 28, 28, 1)
    assert raw.train_images.dtype == np.uint8 and raw.train_labels.dtype == np.int64
    assert raw.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert raw.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(raw.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert len(raw.checksum) == 64 and str(real_data_dir) in raw.origin


# ---------------------------------------------------------------- MNIST layouts and bad files

@pytest.mark.parametrize("layout,gz", [(".", False), ("mnist", True), ("MNIST/raw", True)])
def test_mnist_layouts(tmp_path, layout, gz):
    arrays = write_mnist(tmp_path / "d" / layout, np.random.default_rng(1), gz=gz)
    raw = read_raw(load_raw("mnist", tmp_path / "d", tmp_path / "cache", download=False))
    assert np.array_equal(raw.train_images[..., 0], arrays["train_images"])
    assert np.array_equal(raw.test_labels, arrays["test_labels"])
    assert raw.test_images.shape == (10, 28, 28, 1)


@pytest.mark.parametrize("layout", ["fashion_mnist", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_is_an_idx_dataset_in_folders_of_its_own(tmp_path, layout):
    spec = get_spec("fashion_mnist")
    assert (spec.channels, spec.num_classes, spec.class_names[-1]) == (1, 10, "Ankle boot")
    arrays = write_mnist(tmp_path / "d" / layout, np.random.default_rng(5))
    raw = read_raw(load_raw("fashion_mnist", tmp_path / "d", tmp_path / "cache", download=False))
    assert np.array_equal(raw.train_images[..., 0], arrays["train_images"])
    assert np.array_equal(raw.test_labels, arrays["test_labels"]) and raw.spec is spec
    assert "Fashion-MNIST idx files" in raw.origin
    plan = spec.source.download()  # torchvision's own mirrors and md5s, into its own folder
    assert plan.folder == "FashionMNIST/raw" and plan.files[0][1] == "train-images-idx3-ubyte.gz"
    assert all("fashion-mnist" in url for urls, _, _ in plan.files for url in urls)


def test_fashion_mnist_never_reads_mnist_files(tmp_path):
    write_mnist(tmp_path / "d", np.random.default_rng(6))  # MNIST's files, flat: the same names
    with pytest.raises(DataError, match=r"Fashion-MNIST not found .* in DIR/fashion_mnist/ or DIR/fashion-mnist/"):
        load_raw("fashion_mnist", tmp_path / "d", tmp_path / "cache", download=False)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env", np.random.default_rng(2))
    monkeypatch.setenv("DEEPNETS_DATA_DIR", str(tmp_path / "env"))
    assert len(load_raw("mnist", None, tmp_path / "cache", download=False).train.labels) == 30


def _truncate(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))


def _wrong_magic(path: Path) -> None:
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[3] = 0x99
    path.write_bytes(gzip.compress(bytes(data)))


def _label_out_of_range(path: Path) -> None:
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[8 + 3] = 10
    path.write_bytes(gzip.compress(bytes(data)))


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"this is not gzip data")


@pytest.mark.parametrize("damage,file,message", [
    (_truncate, "train-images-idx3-ubyte.gz", "truncated"),
    (_wrong_magic, "t10k-images-idx3-ubyte.gz", "expected 2051"),
    (_wrong_magic, "train-labels-idx1-ubyte.gz", "expected 2049"),
    (_label_out_of_range, "t10k-labels-idx1-ubyte.gz", "label 10 out of range"),
    (_not_gzip, "train-labels-idx1-ubyte.gz", "cannot read"),
])
def test_bad_mnist_files_name_the_file(tmp_path, damage, file, message):
    write_mnist(tmp_path / "d", np.random.default_rng(3))
    damage(tmp_path / "d" / file)
    with pytest.raises(DataError, match=message) as err:
        load_raw("mnist", tmp_path / "d", tmp_path / "cache", download=False)
    assert str(tmp_path / "d" / file) in str(err.value) and "\n" not in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_raw("mnist", tmp_path / "nope", tmp_path / "cache", download=False)


def test_missing_files_say_what_to_place(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"MNIST not found in .*empty.*train-images-idx3-ubyte\.gz.* in DIR/ or "
                                         r"DIR/mnist/ or DIR/MNIST/raw/.*--data-dir"):
        load_raw("mnist", tmp_path / "empty", tmp_path / "cache", download=False)


def test_failed_download_is_fast_and_leaves_nothing(tmp_path, monkeypatch):
    # A proxy that refuses connections makes every download attempt fail the same way on any machine.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    (tmp_path / "empty").mkdir()
    start = time.monotonic()
    with pytest.raises(DataError, match="download failed") as err:
        load_raw("cifar10", tmp_path / "empty", tmp_path / "cache", download=True)
    assert time.monotonic() - start < 60
    assert "cifar-10-python.tar.gz" in str(err.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# ---------------------------------------------------------------- CIFAR-10, both official formats

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "python"])
@pytest.mark.parametrize("as_tar,nested", [(False, False), (True, False), (True, True), (False, True)],
                         ids=["dir", "tar", "tar-nested", "dir-nested"])
def test_cifar_formats(tmp_path, binary, as_tar, nested):
    batches = cifar_batches(np.random.default_rng(4))
    root = tmp_path / "d" / ("cifar10" if nested else "")
    root.mkdir(parents=True, exist_ok=True)
    write_cifar(root, batches, binary, as_tar)
    raw = read_raw(load_raw("cifar10", tmp_path / "d", tmp_path / "cache", download=False))
    train = [batches[b] for b in CIFAR_BATCHES[:5]]
    assert np.array_equal(raw.train_images, np.concatenate([t[0] for t in train]))
    assert np.array_equal(raw.train_labels, np.concatenate([t[1] for t in train]))
    assert np.array_equal(raw.test_images, batches["test_batch"][0])
    assert np.array_equal(raw.test_labels, batches["test_batch"][1])
    assert raw.train_images.shape == (20, 32, 32, 3) and raw.train_labels.dtype == np.int64


def test_cifar_planes_go_to_the_right_channels(tmp_path):
    batches = cifar_batches(np.random.default_rng(5), n=1)
    (tmp_path / "cifar-10-batches-bin").mkdir()
    for name, (images, labels) in batches.items():
        # 1024 red bytes = 10, then green = 20, then blue row-major 0..1023 (mod 256), label 6
        record = bytes([6]) + bytes([10] * 1024) + bytes([20] * 1024) + bytes(i % 256 for i in range(1024))
        (tmp_path / "cifar-10-batches-bin" / f"{name}.bin").write_bytes(record)
    raw = read_raw(load_raw("cifar10", tmp_path, tmp_path / "cache", download=False))
    image = raw.test_images[0]
    assert (image[..., 0] == 10).all() and (image[..., 1] == 20).all()
    assert image[0, 1, 2] == 1 and image[1, 0, 2] == 32  # row-major: (row 1, col 0) is byte 32
    assert raw.test_labels.tolist() == [6]


def test_bad_cifar_files_name_the_file(tmp_path):
    batches = cifar_batches(np.random.default_rng(6))
    folder = write_cifar(tmp_path / "bin", batches, binary=True, as_tar=False)
    bad = folder / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match="3073-byte records") as err:
        load_raw("cifar10", tmp_path / "bin", tmp_path / "cache", download=False)
    assert str(bad) in str(err.value)

    images, labels = batches["test_batch"]
    labels = labels.copy()
    labels[0] = 12
    (folder / "data_batch_3.bin").write_bytes(cifar_file_bytes(*batches["data_batch_3"], binary=True))
    (folder / "test_batch.bin").write_bytes(cifar_file_bytes(images, labels, binary=True))
    with pytest.raises(DataError, match="label 12 out of range"):
        load_raw("cifar10", tmp_path / "bin", tmp_path / "cache", download=False)

    folder = write_cifar(tmp_path / "py", batches, binary=False, as_tar=False)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": batches["data_batch_2"][0].reshape(4, -1)}))
    with pytest.raises(DataError, match="b'labels'") as err:
        load_raw("cifar10", tmp_path / "py", tmp_path / "cache", download=False)
    assert "data_batch_2" in str(err.value)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        load_raw("cifar10", tmp_path / "py", tmp_path / "cache", download=False)


def test_cifar_missing_batch_in_tar(tmp_path):
    write_cifar(tmp_path, cifar_batches(np.random.default_rng(7)), binary=True, as_tar=True)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile() and "test_batch" not in m.name]
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(DataError, match="test_batch.bin: missing from the archive"):
        load_raw("cifar10", tmp_path, tmp_path / "cache", download=False)


def test_cifar_truncated_tar_is_one_error_naming_it(tmp_path):
    write_cifar(tmp_path, cifar_batches(np.random.default_rng(7)), binary=True, as_tar=True)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz: not a readable tar.gz"):
        load_raw("cifar10", tmp_path, tmp_path / "cache", download=False)


# ---------------------------------------------------------------- CIFAR-100, its official python format

def write_cifar100(root: Path, rng: np.random.Generator, as_tar: bool, n: int = 6) -> dict[str, tuple]:
    """cifar-100-python/{train,test,meta}: pickled dicts with b"data", b"fine_labels" and b"coarse_labels"."""
    splits = {name: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n))
              for name in ("train", "test")}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, (images, labels) in splits.items():
        planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
        (folder / name).write_bytes(pickle.dumps({b"filenames": [b"x.png"] * n, b"fine_labels": [int(x) for x in labels],
                                                  b"coarse_labels": [int(x) // 5 for x in labels], b"data": planes}))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"] * 100}))
    if as_tar:
        with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-100-python")
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return splits


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_cifar100_reads_fine_labels_from_its_python_format(tmp_path, as_tar):
    spec = get_spec("cifar100")
    assert (spec.channels, spec.num_classes, spec.class_names[:2], spec.class_names[-1]) == (
        3, 100, ("apple", "aquarium_fish"), "worm")
    splits = write_cifar100(tmp_path / "d", np.random.default_rng(9), as_tar)
    raw = read_raw(load_raw("cifar100", tmp_path / "d", tmp_path / "cache", download=False))
    assert np.array_equal(raw.train_images, splits["train"][0]) and np.array_equal(raw.train_labels, splits["train"][1])
    assert np.array_equal(raw.test_images, splits["test"][0]) and np.array_equal(raw.test_labels, splits["test"][1])
    assert "CIFAR-100 python format" in raw.origin
    plan = spec.source.download()
    assert plan.files[0][1] == "cifar-100-python.tar.gz" and plan.files[0][0][0].endswith("cifar-100-python.tar.gz")


def test_cifar100_and_cifar10_files_are_told_apart(tmp_path):
    write_cifar(tmp_path / "d", cifar_batches(np.random.default_rng(10)), binary=False, as_tar=True)
    with pytest.raises(DataError, match=r"CIFAR-100 not found .*cifar-100-python\.tar\.gz"):
        load_raw("cifar100", tmp_path / "d", tmp_path / "cache", download=False)
    write_cifar100(tmp_path / "d", np.random.default_rng(11), as_tar=True)
    assert load_raw("cifar10", tmp_path / "d", tmp_path / "cache", download=False).train.labels.max() < 10


def test_cifar100_labels_are_checked_against_its_hundred_classes(tmp_path):
    write_cifar100(tmp_path / "d", np.random.default_rng(12), as_tar=False)
    test = tmp_path / "d" / "cifar-100-python" / "test"
    batch = pickle.loads(test.read_bytes())
    batch[b"fine_labels"][0] = 100
    test.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"label 100 out of range; expected 0\.\.99") as err:
        load_raw("cifar100", tmp_path / "d", tmp_path / "cache", download=False)
    assert str(test) in str(err.value)


# ---------------------------------------------------------------- synthetic data

@pytest.mark.parametrize("name", [name for name, spec in DATASETS.items() if spec.num_classes <= 200])
def test_synthetic_shapes_balance_determinism(name):
    spec = DATASETS[name]
    n_train, n_test = 2 * spec.num_classes + 5, 4 * spec.num_classes  # unbalanced by 5, exactly 4 per class
    a, b, c = (read_raw(make_synthetic(name, n_train, n_test, seed=seed)) for seed in (3, 3, 4))
    assert a.train_images.shape == (n_train, spec.native_size, spec.native_size, spec.channels)
    assert a.test_images.shape == (n_test, spec.native_size, spec.native_size, spec.channels)
    assert a.train_images.dtype == np.uint8 and a.train_labels.dtype == np.int64
    counts = np.bincount(a.train_labels, minlength=spec.num_classes)
    assert len(counts) == spec.num_classes and counts.max() - counts.min() <= 1
    assert np.bincount(a.test_labels).tolist() == [4] * spec.num_classes
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.train_images, c.train_images)
    assert a.checksum == b.checksum == synthetic_checksum(name, n_train, n_test, 3) != c.checksum
    # the test set does not depend on the size of the training set
    assert np.array_equal(make_synthetic(name, 3 * n_train, n_test, seed=3).test.images, a.test_images)


@pytest.fixture
def one_torch_thread():
    """Tiny models run ~10x faster single-threaded on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_synthetic_is_learnable_by_a_small_cnn(one_torch_thread):
    """A 2-conv net with global pooling gets far above chance (10%) within 40 steps, even with flips."""
    torch.manual_seed(0)
    raw = read_raw(make_synthetic("cifar10", 1000, 200))

    def prep(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255

    x_train, y_train = prep(raw.train_images), torch.from_numpy(raw.train_labels)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for step in range(40):
        i = torch.randint(0, len(y_train), (64,))
        x = x_train[i].flip(3) if step % 2 else x_train[i]
        loss = torch.nn.functional.cross_entropy(net(x), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(prep(raw.test_images)).argmax(1) == torch.from_numpy(raw.test_labels)).float().mean()
    assert accuracy > 0.6


@pytest.mark.parametrize("name,steps,floor", [("tiny_imagenet", 150, 0.3), pytest.param("imagenet64", 200, 0.015, marks=pytest.mark.slow)])
def test_synthetic_stays_learnable_at_200_and_1000_classes(one_torch_thread, name, steps, floor):
    """Five textures x a colour each (pattern_colours: levels 22 or more apart per channel) for 200 and 1,000
    classes, four training images of each: a small CNN learns them far above chance (0.5 % and 0.1 %) within a few
    hundred steps; it would stay at chance if colours blurred into each other as the ten-class greys would."""
    torch.manual_seed(0)
    classes = DATASETS[name].num_classes
    raw = read_raw(make_synthetic(name, 4 * classes, 2 * classes))

    def prep(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255

    x_train, y_train = prep(raw.train_images), torch.from_numpy(raw.train_labels)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        i = torch.randint(0, len(y_train), (128,))
        loss = torch.nn.functional.cross_entropy(net(x_train[i].flip(3) if step % 2 else x_train[i]), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(prep(raw.test_images)).argmax(1) == torch.from_numpy(raw.test_labels)).float().mean()
    assert accuracy > floor
