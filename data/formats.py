"""The official file formats datasets ship in (MNIST's idx files, CIFAR's batches): find, validate and parse them,
each split its labels up front and its images in chunks; every bad file is one line naming it.
"""
from __future__ import annotations

import gzip
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator, Protocol

import numpy as np

from data.errors import DataError

if TYPE_CHECKING:
    from data.datasets import DatasetSpec

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train images, train labels, test images, test labels
CHUNK = 1024  # images per chunk: the unit an encoder decodes on one thread (12 MiB of 64x64 RGB)


@dataclass(frozen=True)
class Chunk:
    """Consecutive images of a split: their labels, and `pixels()` making the (n, H, W, C) uint8 images (the
    decoding, done on whichever thread calls it)."""

    labels: np.ndarray
    pixels: Callable[[], np.ndarray]


class OfficialSplit(Protocol):
    """An official split (training or test set): every label, checked, in file order, and its images in chunks."""

    labels: np.ndarray

    def chunks(self, keep: np.ndarray) -> Iterator[Chunk]:
        """The images at the sorted positions `keep`, in order."""


@dataclass(frozen=True)
class ArraySplit:
    """A split held in memory: the small formats (idx, CIFAR) and synthetic data."""

    images: np.ndarray
    labels: np.ndarray

    def chunks(self, keep: np.ndarray) -> Iterator[Chunk]:
        for start in range(0, len(keep), CHUNK):
            part = keep[start:start + CHUNK]
            yield Chunk(self.labels[part], partial(np.take, self.images, part, axis=0))


def in_memory(arrays: Arrays) -> tuple[ArraySplit, ArraySplit]:
    train_images, train_labels, test_images, test_labels = arrays
    return ArraySplit(train_images, train_labels), ArraySplit(test_images, test_labels)


@dataclass(frozen=True)
class Container:
    """An extracted folder, or the zip it came from whose files sit in a folder of that name (as the official zips
    of Tiny ImageNet and ImageNet 64x64 have them). Read from one thread (the encoder's)."""

    path: Path  # the folder or the .zip
    name: str  # the folder's name, inside the zip too

    @cached_property
    def archive(self) -> zipfile.ZipFile | None:
        if self.path.is_dir():
            return None
        try:
            return zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{self.path}: not a readable zip ({e.__class__.__name__}: {e})") from None

    @cached_property
    def names(self) -> frozenset[str]:
        """Every file, as a path below the folder."""
        if self.archive is None:
            return frozenset(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())
        prefix = f"{self.name}/"
        return frozenset(name[len(prefix):] for name in self.archive.namelist()
                         if name.startswith(prefix) and not name.endswith("/"))

    def where(self, name: str) -> str:
        return str(self.path / name) if self.archive is None else f"{self.path}:{self.name}/{name}"

    def open(self, name: str) -> IO[bytes]:
        if name not in self.names:
            raise DataError(f"{self.where(name)}: missing; expected the official layout")
        return open(self.path / name, "rb") if self.archive is None else self.archive.open(f"{self.name}/{name}")

    def read(self, name: str) -> bytes:
        try:
            with self.open(name) as handle:
                return handle.read()
        except (OSError, zipfile.BadZipFile, EOFError) as e:  # a truncated archive fails here, member by member
            raise DataError(f"{self.where(name)}: cannot read ({e.__class__.__name__}: {e})") from None


@dataclass(frozen=True)
class SourceFiles:
    """Located, not yet read, source files: enough to checksum them without decoding the data."""

    paths: tuple[Path, ...]  # the files (or folders) whose bytes identify the source
    origin: str  # human-readable: where and in which format
    open: Callable[[], tuple[OfficialSplit, OfficialSplit]]  # (train, test), their structure and labels checked


@dataclass(frozen=True)
class Download:
    """What to fetch into `folder` (relative to the raw-data folder): (mirror URLs, file name, md5) each."""

    folder: str
    files: tuple[tuple[tuple[str, ...], str, str], ...]


def read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e}); expected a complete file") from None


def checked_labels(labels: np.ndarray, num_classes: int, where: Path | str) -> np.ndarray:
    try:
        labels = np.asarray(labels).astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: labels are not integers; expected class numbers 0..{num_classes - 1}") from None
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}; expected a flat list")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(f"{where}: label {bad} out of range; expected 0..{num_classes - 1}")
    return labels


def same_length(images: np.ndarray, labels: np.ndarray, where: Path | str) -> None:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; expected one label per image")


# ---------------------------------------------------------------- idx (MNIST's distribution format)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: Path, *, expect_images: bool, size: int, num_classes: int) -> np.ndarray:
    """Parse one idx file (optionally gzipped): images -> (N, size, size, 1) uint8, labels -> (N,) int64."""
    raw = read_bytes(path)
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
    return checked_labels(body, num_classes, path)


def _parse_idx(paths: tuple[Path, ...], size: int, num_classes: int) -> Arrays:
    train_images_path, train_labels_path, test_images_path, test_labels_path = paths
    read = partial(read_idx, size=size, num_classes=num_classes)
    train_images, train_labels = read(train_images_path, expect_images=True), read(train_labels_path, expect_images=False)
    test_images, test_labels = read(test_images_path, expect_images=True), read(test_labels_path, expect_images=False)
    same_length(train_images, train_labels, train_labels_path)
    same_length(test_images, test_labels, test_labels_path)
    return train_images, train_labels, test_images, test_labels


@dataclass(frozen=True)
class IdxFiles:
    """The four idx files (each raw or .gz) in one of `folders` of a data directory ("" = the directory
    itself) or in torchvision's `<torchvision_class>/raw/`, which is also where a download puts them."""

    folders: tuple[str, ...]
    torchvision_class: str  # "MNIST", "FashionMNIST": its mirrors and md5s drive the download

    @property
    def search_folders(self) -> tuple[str, ...]:
        return (*self.folders, f"{self.torchvision_class}/raw")

    def find(self, directory: Path, spec: DatasetSpec) -> SourceFiles | None:
        for folder in self.search_folders:
            sub = directory / folder
            found = []
            for base in IDX_FILES:
                candidates = [p for p in (sub / base, sub / f"{base}.gz") if p.is_file()]
                if not candidates:
                    break
                found.append(candidates[0])
            else:
                paths = tuple(found)
                return SourceFiles(paths, f"{spec.title} idx files in {sub}",
                                   lambda: in_memory(_parse_idx(paths, spec.native_size, spec.num_classes)))
        return None

    def download(self) -> Download:
        import torchvision.datasets

        dataset = getattr(torchvision.datasets, self.torchvision_class)
        return Download(f"{self.torchvision_class}/raw",
                        tuple((tuple(m + f for m in dataset.mirrors), f, md5) for f, md5 in dataset.resources))

    def place_hint(self) -> str:
        where = " or ".join(f"DIR/{folder}/" if folder else "DIR/" for folder in self.search_folders)
        return f"{', '.join(f'{name}.gz' for name in IDX_FILES)} in {where}"


# ---------------------------------------------------------------- CIFAR batches (binary records or python pickles)

CIFAR_SIZE = 32
CIFAR_PIXELS = CIFAR_SIZE * CIFAR_SIZE * 3


def planes_to_hwc(flat: np.ndarray, size: int = CIFAR_SIZE) -> np.ndarray:
    """CIFAR (and ImageNet 64x64) store each image as its red, green, then blue plane, each row-major."""
    return flat.reshape(-1, 3, size, size).transpose(0, 2, 3, 1).copy()


def parse_cifar_binary(raw: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte then 3072 pixel bytes (CIFAR-10's binary format)."""
    record = 1 + CIFAR_PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of {record}-byte records "
                        "(1 label + 3072 pixels); truncated or corrupt")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return planes_to_hwc(records[:, 1:]), checked_labels(records[:, 0], num_classes, where)


def parse_cifar_pickle(raw: bytes, where: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A pickled dict with b"data" (N x 3072 uint8) and the labels under `label_key`."""
    # The official python batches are pickles (torchvision reads them the same way): only use trusted files.
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as e:  # a corrupt pickle can raise almost any exception type
        raise DataError(f"{where}: not a readable CIFAR python batch ({e.__class__.__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{where}: expected a pickled dict with b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        raise DataError(f"{where}: b'data' is {data.dtype} {data.shape}; expected uint8 (N, {CIFAR_PIXELS})")
    labels = checked_labels(np.asarray(batch[label_key]), num_classes, where)
    same_length(data, labels, where)
    return planes_to_hwc(data), labels


@dataclass(frozen=True)
class CifarLayout:
    """One official CIFAR distribution: its extracted folder, its tar.gz, its batch files, and how labels
    are stored (`label_key` of the python pickles, or None for binary records)."""

    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes | None

    @property
    def format(self) -> str:
        return "binary" if self.label_key is None else "python"

    def read_members(self, container: Path, names: tuple[str, ...]) -> list[tuple[bytes, str]]:
        """Batch files (bytes, where), from the extracted folder or out of the official tar.gz in one pass."""
        if container.is_dir():
            missing = [container / name for name in names if not (container / name).is_file()]
            if missing:
                raise DataError(f"{missing[0]}: missing; expected the official batch file here")
            return [(read_bytes(container / name), str(container / name)) for name in names]
        wanted, found = {f"{self.folder}/{name}": name for name in names}, {}
        try:
            with tarfile.open(container, "r|gz") as tar:  # a stream: the archive is decompressed once
                for member in tar:
                    if member.name in wanted and member.isfile():
                        found[wanted[member.name]] = tar.extractfile(member).read()
        except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
            raise DataError(f"{container}: not a readable tar.gz ({e.__class__.__name__}: {e})") from None
        for inner, name in wanted.items():
            if name not in found:
                raise DataError(f"{container}:{inner}: missing from the archive; expected the official layout")
        return [(found[name], f"{container}:{self.folder}/{name}") for name in names]

    def parse(self, container: Path, num_classes: int) -> Arrays:
        def load(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
            parts = [parse_cifar_binary(raw, where, num_classes) if self.label_key is None
                     else parse_cifar_pickle(raw, where, self.label_key, num_classes)
                     for raw, where in self.read_members(container, names)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        return *load(self.train), *load(self.test)


@dataclass(frozen=True)
class CifarFiles:
    """Any of `layouts`, extracted or not, in a data directory or one level down; a download fetches
    torchvision's `<torchvision_class>` archive (one of the layouts' tar.gz)."""

    layouts: tuple[CifarLayout, ...]
    torchvision_class: str  # "CIFAR10", "CIFAR100"

    def _source(self, layout: CifarLayout, container: Path, spec: DatasetSpec) -> SourceFiles:
        paths: tuple[Path, ...] = (container,)
        if container.is_dir():
            paths = tuple(container / name for name in (*layout.train, *layout.test))
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"{container}: missing {', '.join(missing)}; "
                                f"expected the official {spec.title} {layout.format} batches")
        return SourceFiles(paths, f"{spec.title} {layout.format} format at {container}",
                           lambda: in_memory(layout.parse(container, spec.num_classes)))

    def find(self, directory: Path, spec: DatasetSpec) -> SourceFiles | None:
        # Hidden folders are skipped: an interrupted download leaves its unverified files in one.
        subfolders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        for base in (directory, *subfolders):
            for layout in self.layouts:
                for name in (layout.folder, layout.archive):
                    if (base / name).exists():
                        return self._source(layout, base / name, spec)
        return None

    def download(self) -> Download:
        import torchvision.datasets

        dataset = getattr(torchvision.datasets, self.torchvision_class)
        return Download("", (((dataset.url,), dataset.filename, dataset.tgz_md5),))

    def place_hint(self) -> str:
        names = [layout.archive for layout in self.layouts]
        folders = [f"{layout.folder}/" for layout in self.layouts]
        return f"{' or '.join(names)} (or the extracted {' or '.join(folders)})"


class SourceFormat(Protocol):
    """What a dataset entry needs from its format: IdxFiles and CifarFiles here, TinyImageNetFiles
    (data/tiny_imagenet.py) and Imagenet64Files (data/imagenet64.py)."""

    def find(self, directory: Path, spec: DatasetSpec) -> SourceFiles | None: ...

    def download(self) -> Download | None: ...  # None: the files cannot be downloaded

    def place_hint(self) -> str: ...
