"""File plumbing shared by the data cache and the results folder: atomic writes and content hashes.

Every file the harness writes (a .beton, a manifest, a run record, a table, a plot) goes through
`atomic_write`: it is written under a hidden temporary name unique to the process and call, flushed
to disk, then renamed over its final name. A reader, a concurrent job or a killed process therefore
never sees a half-written file, and a failed write leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable


def temp_sibling(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process and call: concurrent writers never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Let `write` create a temp file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
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


def sha256_files(paths: Iterable[Path]) -> str:
    """One sha256 over the bytes of `paths`, in order, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
