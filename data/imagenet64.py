"""ImageNet 64x64's official files (Chrabaszcz, Loshchilov & Hutter 2017), as image-net.org serves them.

Two variants, each as its three zips or their extracted folders (of the zips' names), in a data directory or one
level down:
- npz, served today: `Imagenet64_train_part1_npz.zip`, `Imagenet64_train_part2_npz.zip`, `Imagenet64_val_npz.zip`,
  holding `train_data_batch_1.npz` ... `_10.npz` and `val_data.npz`;
- pickled, the older one: `Imagenet64_train_part1.zip`, `Imagenet64_train_part2.zip`, `Imagenet64_val.zip`, holding
  `train_data_batch_1` ... `_10` and `val_data`, each a pickled dict.
Each batch holds `data`, uint8 N x 12288 (the red, green and blue 64x64 planes, as CIFAR's), and `labels`, 1...1000
in the dataset authors' class order (data/classes/map_clsloc.txt); a training batch's `mean` is not read. An npz
batch streams a chunk at a time, out of the zips too; a pickled batch is read whole, one at a time.
"""
from __future__ import annotations

import pickle
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

import numpy as np

from data.errors import DataError
from data.formats import CHUNK, Chunk, Container, SourceFiles, planes_to_hwc

if TYPE_CHECKING:
    from data.datasets import DatasetSpec

SIZE = 64
PIXELS = 3 * SIZE * SIZE
CLASSES = 1000
TRAIN_BATCHES = 10
PARTS = ("Imagenet64_train_part1", "Imagenet64_train_part2", "Imagenet64_val")
UNPACK_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError)


@dataclass(frozen=True)
class Variant:
    suffix: str  # of the zips and folders: "_npz" or ""
    extension: str  # of the batch files: ".npz" or ""

    @property
    def name(self) -> str:
        return "npz" if self.extension else "pickled"

    @property
    def containers(self) -> tuple[str, ...]:
        return tuple(part + self.suffix for part in PARTS)

    def batch(self, number: int | None) -> str:
        """train_data_batch_<number>, or val_data for None, with the variant's extension."""
        return (f"train_data_batch_{number}" if number else "val_data") + self.extension


VARIANTS = (Variant("_npz", ".npz"), Variant("", ""))


@dataclass(frozen=True)
class _Batch:
    """One batch file: its labels (0-based, checked) and its images, streamed."""

    container: Container
    file: str

    @property
    def where(self) -> str:
        return self.container.where(self.file)

    def error(self, problem: str) -> DataError:
        return DataError(f"{self.where}: {problem}; expected an official ImageNet 64x64 batch")

    @contextmanager
    def _arrays(self) -> Iterator[tuple[np.ndarray, IO[bytes] | np.ndarray]]:
        """(labels as stored, the pixels: a stream of rows after the npy header, or the whole array)."""
        try:
            with ExitStack() as stack:
                handle = stack.enter_context(self.container.open(self.file))
                if self.file.endswith(".npz"):
                    npz = stack.enter_context(zipfile.ZipFile(handle))
                    labels = np.lib.format.read_array(npz.open("labels.npy"))
                    data = stack.enter_context(npz.open("data.npy"))
                    version = np.lib.format.read_magic(data)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = header(data)
                    if dtype != np.uint8 or fortran or len(shape) != 2 or shape[1] != PIXELS:
                        raise self.error(f"data is {dtype} {shape}")
                    if shape[0] != len(labels):
                        raise self.error(f"{shape[0]} images but {len(labels)} labels")
                else:
                    batch = pickle.load(handle)  # the official batches are pickles: only use trusted files
                    labels, data = np.asarray(batch["labels"]), np.asarray(batch["data"])
                    if data.dtype != np.uint8 or data.shape != (len(labels), PIXELS):
                        raise self.error(f"data is {data.dtype} {data.shape} for {len(labels)} labels")
                yield labels, data
        except DataError:
            raise
        except UNPACK_ERRORS as e:  # truncated, not a zip or pickle, members missing
            raise self.error(f"cannot read it ({e.__class__.__name__}: {e})") from None

    @cached_property
    def labels(self) -> np.ndarray:
        """0-based: the files count from 1."""
        with self._arrays() as (labels, _):
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise self.error(f"labels are {labels.dtype} {labels.shape}")
            bad = labels[(labels < 1) | (labels > CLASSES)]
            if bad.size:
                raise DataError(f"{self.where}: label {bad[0]} out of range; expected 1..{CLASSES} (map_clsloc.txt's)")
            return labels.astype(np.int64) - 1

    def chunks(self, keep: np.ndarray) -> Iterator[Chunk]:
        """The images at the sorted positions `keep` of this file, a chunk of rows read at a time."""
        if not len(keep):
            return
        with self._arrays() as (_, data):
            for start in range(0, int(keep[-1]) + 1, CHUNK):
                count = min(CHUNK, len(self.labels) - start)
                if isinstance(data, np.ndarray):
                    rows = data[start:start + count]
                else:
                    try:
                        raw = data.read(count * PIXELS)
                    except UNPACK_ERRORS as e:
                        raise self.error(f"cannot read its images ({e.__class__.__name__}: {e})") from None
                    if len(raw) != count * PIXELS:
                        raise self.error(f"its images end within image {start + len(raw) // PIXELS}; truncated")
                    rows = np.frombuffer(raw, np.uint8).reshape(count, PIXELS)
                chosen = keep[(keep >= start) & (keep < start + count)] - start
                if len(chosen):
                    yield Chunk(self.labels[chosen + start], partial(planes_to_hwc, rows[chosen], SIZE))


@dataclass(frozen=True)
class Imagenet64Split:
    """An official split: its batch files in order."""

    batches: tuple[_Batch, ...]

    @cached_property
    def labels(self) -> np.ndarray:
        return np.concatenate([batch.labels for batch in self.batches])

    def chunks(self, keep: np.ndarray) -> Iterator[Chunk]:
        start = 0
        for batch in self.batches:
            end = start + len(batch.labels)
            yield from batch.chunks(keep[(keep >= start) & (keep < end)] - start)
            start = end


def _open(containers: tuple[Container, ...], variant: Variant) -> tuple[Imagenet64Split, Imagenet64Split]:
    """Find each batch in its container (either training part may hold any training batch) and read every label."""
    *train_parts, val_part = containers
    train = []
    for number in range(1, TRAIN_BATCHES + 1):
        holders = [part for part in train_parts if variant.batch(number) in part.names]
        if len(holders) != 1:
            names = " or ".join(str(part.path) for part in train_parts)
            raise DataError(f"{names}: {'neither' if not holders else 'both'} holds {variant.batch(number)}; expected "
                            f"each of train_data_batch_1{variant.extension} ... _{TRAIN_BATCHES} in one of them")
        train.append(_Batch(holders[0], variant.batch(number)))
    if variant.batch(None) not in val_part.names:
        raise DataError(f"{val_part.where(variant.batch(None))}: missing; expected the official validation batch")
    splits = Imagenet64Split(tuple(train)), Imagenet64Split((_Batch(val_part, variant.batch(None)),))
    for split in splits:
        split.labels  # read and checked now, before anything is encoded
    return splits


@dataclass(frozen=True)
class Imagenet64Files:
    """Either variant, zipped or extracted; not downloadable (image-net.org asks for a login)."""

    def find(self, directory: Path, spec: DatasetSpec) -> SourceFiles | None:
        subfolders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        for variant in VARIANTS:
            for base in (directory, *subfolders):
                found = {name: next((path for path in (base / name, base / f"{name}.zip") if path.exists()), None)
                         for name in variant.containers}
                present = [name for name, path in found.items() if path is not None]
                if len(present) == len(found):
                    containers = tuple(Container(found[name], name) for name in variant.containers)
                    return SourceFiles(tuple(found.values()), f"{spec.title} {variant.name} batches in {base}",
                                       partial(_open, containers, variant))
                if present:
                    missing = [f"{name}.zip" for name in found if name not in present]
                    raise DataError(f"{base}: has {', '.join(present)} but not {' or '.join(missing)} (nor its "
                                    f"extracted folder); expected all three of ImageNet 64x64's {variant.name} files")
        return None

    def download(self) -> None:
        """None: image-net.org serves it after a login."""

    def place_hint(self) -> str:
        npz, pickled = (", ".join(f"{name}.zip" for name in variant.containers) for variant in VARIANTS)
        return f"{npz} (or the older {pickled}), zipped or extracted"
