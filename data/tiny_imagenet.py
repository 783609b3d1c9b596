"""Tiny ImageNet's official files: `tiny-imagenet-200.zip` or the extracted `tiny-imagenet-200/`.

The layout: `wnids.txt` (the 200 classes), `words.txt` (names), `train/<wnid>/images/*.JPEG` (500 a class) and
`val/images/*.JPEG` labelled by `val/val_annotations.txt` (`file<TAB>wnid<TAB>box`); `test/` has no labels and
is not read. The official training set is train/ (the entry holds its validation split out of it, per class) and
the official validation set is the test split. Labels follow the entry's wnids (sorted), whatever the order of
wnids.txt; every JPEG is decoded to RGB (some are grayscale) and must be 64x64.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

from data.errors import DataError
from data.formats import CHUNK, Chunk, Container, Download, SourceFiles

if TYPE_CHECKING:
    from data.datasets import DatasetSpec

FOLDER = "tiny-imagenet-200"
ARCHIVE = f"{FOLDER}.zip"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # the archive's, as torchvision-style loaders check it
SIZE = 64


def decode_jpegs(payloads: list[tuple[bytes, str]]) -> np.ndarray:
    """(n, 64, 64, 3) uint8 from JPEG bytes, each named by where it came from for a one-line error."""
    images = np.empty((len(payloads), SIZE, SIZE, 3), np.uint8)
    for i, (data, where) in enumerate(payloads):
        try:
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's ways of saying "not an image"
            raise DataError(f"{where}: not a readable JPEG ({e.__class__.__name__}: {e})") from None
        if pixels.shape != (SIZE, SIZE, 3):
            raise DataError(f"{where}: a {pixels.shape[1]}x{pixels.shape[0]} image; expected {SIZE}x{SIZE}")
        images[i] = pixels
    return images


def _lines(files: Container, name: str) -> list[str]:
    try:
        return files.read(name).decode().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{files.where(name)}: not text; expected the official file") from None


@dataclass(frozen=True)
class TinySplit:
    """One official split: its JPEGs in order and their labels."""

    files: Container
    members: tuple[str, ...]
    labels: np.ndarray

    def chunks(self, keep: np.ndarray) -> Iterator[Chunk]:
        for start in range(0, len(keep), CHUNK):
            part = keep[start:start + CHUNK]
            payloads = [(self.files.read(self.members[i]), self.files.where(self.members[i])) for i in part]
            yield Chunk(self.labels[part], partial(decode_jpegs, payloads))


def _open(files: Container, wnids: tuple[str, ...]) -> tuple[TinySplit, TinySplit]:
    """Check wnids.txt against the entry's classes, list the training JPEGs per class and read the validation
    annotations: every problem is one line naming the file."""
    index = {wnid: label for label, wnid in enumerate(wnids)}
    listed = [line.strip() for line in _lines(files, "wnids.txt") if line.strip()]
    missing, unknown = sorted(set(wnids) - set(listed)), sorted(set(listed) - set(wnids))
    if missing or unknown:
        what = f"lacks {', '.join(missing[:3])}" if missing else f"has {', '.join(unknown[:3])}, not one of them"
        raise DataError(f"{files.where('wnids.txt')}: {what}; expected Tiny ImageNet's {len(wnids)} classes")
    by_class: dict[str, list[str]] = {wnid: [] for wnid in wnids}
    for name in files.names:  # train/<wnid>/images/<file>.JPEG
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and parts[3].endswith(".JPEG"):
            by_class.setdefault(parts[1], []).append(name)
    train, labels = [], []
    for wnid in wnids:
        if not by_class[wnid]:
            raise DataError(f"{files.where(f'train/{wnid}/images')}: no JPEG of class {wnid}; expected its training images")
        train += sorted(by_class[wnid])
        labels += [index[wnid]] * len(by_class[wnid])
    val, val_labels = [], []
    for number, line in enumerate(_lines(files, "val/val_annotations.txt"), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{files.where('val/val_annotations.txt')}: line {number} is {line[:60]!r}; expected "
                            "an image file and one of wnids.txt's classes, tab-separated")
        if f"val/images/{fields[0]}" not in files.names:
            raise DataError(f"{files.where(f'val/images/{fields[0]}')}: missing; val_annotations.txt line {number} names it")
        val.append(f"val/images/{fields[0]}")
        val_labels.append(index[fields[1]])
    return (TinySplit(files, tuple(train), np.asarray(labels, np.int64)),
            TinySplit(files, tuple(val), np.asarray(val_labels, np.int64)))


@dataclass(frozen=True)
class TinyImageNetFiles:
    """The zip or its extracted folder, in a data directory or one level down; downloadable (md5-checked)."""

    wnids: tuple[str, ...]  # the classes, in label order

    def find(self, directory: Path, spec: DatasetSpec) -> SourceFiles | None:
        subfolders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        for base in (directory, *subfolders):
            for container in (base / FOLDER, base / ARCHIVE):
                if container.exists():
                    return SourceFiles((container,), f"{spec.title} {'folder' if container.is_dir() else 'zip'} "
                                       f"at {container}", partial(_open, Container(container, FOLDER), self.wnids))
        return None

    def download(self) -> Download:
        return Download("", (((URL,), ARCHIVE, MD5),))

    def place_hint(self) -> str:
        return f"{ARCHIVE} (or the extracted {FOLDER}/)"
