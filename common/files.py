"""Atomic writes and full disks: every file is written under a temporary name and renamed into place, and a full disk is
one line naming the folder (`DiskFull`), never a half-written file or a traceback (docs/design.md).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_WORDS = ("no space left", "storagefull", "disk quota exceeded", "os error 28")
NEARLY_FULL_BYTES = 1 << 20  # a failed write on a file system with less than this free: it filled up


class DiskFull(OSError):
    """A write found its disk or quota full; the message is one line for the user."""


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error`, raised while writing into `folder`, means the disk (or quota) there is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        if any(word in str(seen).lower() for word in FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        return shutil.disk_usage(existing).free < NEARLY_FULL_BYTES
    except (OSError, StopIteration):
        return False


@contextmanager
def full_disk_is_one_line(folder: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a full disk met by the writes inside into `DiskFull` naming `folder`, after removing `cleanup` (what the
    writes were making), so that nothing half-written stays."""
    try:
        yield
    except Exception as error:
        if not (isinstance(error, DiskFull) or disk_full(error, Path(folder))):
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True) if Path(cleanup).is_dir() else Path(cleanup).unlink(
                missing_ok=True)
        if isinstance(error, DiskFull):
            raise
        raise DiskFull(f"{folder}: no space left on its device; free some space there (or choose another folder) "
                       "and run again; nothing half-written was kept") from error


def temp_sibling(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process and call: concurrent writers never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Let `write` create a temp file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = temp_sibling(path)
    with full_disk_is_one_line(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, payload: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def sha256_files(paths: Iterable[Path], digest: Any = None) -> str:
    """One sha256 over the bytes of `paths`, in order, read in 4 MiB chunks."""
    digest = hashlib.sha256() if digest is None else digest
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _stamp(path: Path) -> list:
    """What says a file (size, mtime) or a folder (each file's name, size and mtime) has not changed."""
    if path.is_dir():
        listing = [(str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in _files_in(path)]
        return ["folder", hashlib.sha256(json.dumps(listing).encode()).hexdigest()]
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _content_sha256(path: Path) -> str:
    """A file's bytes, or a folder's file names and bytes in name order."""
    if not path.is_dir():
        return sha256_files([path])
    digest = hashlib.sha256()
    for file in _files_in(path):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        sha256_files([file], digest)
    return digest.hexdigest()


class ChecksumCache:
    """sha256s of source files and folders, remembered in a JSON file by path, size and mtime: a start, or another
    process, does not read 16 GB again to find them unchanged. `save` adds what was hashed since (atomically: a
    concurrent job's entries can be lost, never corrupted, and are then hashed once more)."""

    def __init__(self, file: Path) -> None:
        self.file, self.new = Path(file), {}
        try:
            self.known = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.known = {}

    def digest(self, paths: Iterable[Path]) -> str:
        """One sha256 over the files' (or folders') own sha256s, in order."""
        digests = []
        for path in paths:
            key, stamp = str(Path(path).resolve()), _stamp(Path(path))
            entry = self.known.get(key)
            if not (isinstance(entry, dict) and entry.get("stamp") == stamp):
                entry = self.new[key] = {"stamp": stamp, "sha256": _content_sha256(Path(path))}
            digests.append(entry["sha256"])
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()

    def save(self) -> None:
        if self.new:
            known = ChecksumCache(self.file).known  # what other processes saved meanwhile
            write_json_atomic(self.file, {**known, **self.new})
