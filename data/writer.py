"""Writing and checking .beton files: batches streamed through a pipe into ffcv's DatasetWriter, bounded in memory and
time, byte-identical run to run, and always stoppable (ffcv's writer would hang on a failed worker).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queues
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from common.files import atomic_write
from data.errors import DataError

IMAGE_SIZE = 64
FIELD_NAMES = ("image", "label", "index")
WRITER_GRACE_S = 15.0  # how long the writer may take to finish after its worker exited
QUEUED_BATCHES = 4  # batches on their way to the writer: what the parent may run ahead by
WORK_CHUNK = 8192  # samples per piece of ffcv's work list (its progress bar moves a piece at a time)
POLL_S = 0.5  # how often the parent, waiting to pass a batch on, looks whether the writer is still there
Batch = tuple[np.ndarray, np.ndarray]  # (N, 64, 64, C) uint8 images, (N,) int64 labels


def beton_fields(channels: int, jpeg_quality: int | None = None) -> dict[str, Any]:
    """The fields of every .beton: RGB images raw (or JPEG at `jpeg_quality`), grayscale as raw arrays."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    if channels == 3:
        image = (RGBImageField(write_mode="raw", max_resolution=IMAGE_SIZE) if jpeg_quality is None else
                 RGBImageField(write_mode="jpg", max_resolution=IMAGE_SIZE, jpeg_quality=jpeg_quality))
    else:
        image = NDArrayField(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.dtype("uint8"))
    return {"image": image, "label": IntField(), "index": IntField()}


def validate_batch(images: np.ndarray, labels: np.ndarray, num_classes: int, where: Path | str) -> None:
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


@dataclass
class _Streamed:
    """What DatasetWriter indexes, in the worker: ffcv's one worker asks for 0, 1, 2, ... in turn, and each batch
    that arrives through the pipe answers the next few. The parent holds the pipe's only write end, so a parent
    that dies (even in the middle of a batch) is an EOFError here, not a wait forever."""

    pipe: Any  # the read end
    count: int
    parent: int  # pid of the process that sends the batches
    start: int = 0
    batch: Batch = field(default_factory=lambda: (np.empty(0), np.empty(0)))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        while i >= self.start + len(self.batch[1]):
            self.start += len(self.batch[1])
            self.batch = self.pipe.recv()
        return self.batch[0][i - self.start], int(self.batch[1][i - self.start]), int(i)


def _writer_host(writer: Any, samples: _Streamed, report: Any, desc: str, parents_end: Any) -> None:
    """Runs in a forked child, in its own process group, so that the parent can always stop it.

    ffcv's writer waits forever when a worker dies, so a watchdog thread ends this process once every
    worker has exited but the writer has not returned, or once the parent is gone (killed); the parent
    also enforces an overall timeout.
    """
    from multiprocessing import shared_memory

    import ffcv.writer
    from tqdm import tqdm

    os.setpgid(0, 0)
    parents_end.close()  # before ffcv forks its worker: the parent's must be the only write end
    ffcv.writer.tqdm = partial(tqdm, desc=desc, unit="img", mininterval=2.0)  # its progress bar, with a name

    def abort(message: str) -> None:
        shm = getattr(writer, "metadata_sm", None)
        if isinstance(shm, shared_memory.SharedMemory):
            with contextlib.suppress(FileNotFoundError):  # ffcv would leak it in /dev/shm
                shm.unlink()
        with contextlib.suppress(OSError):  # a parent that is gone reads no reason
            report.send(message)
        os._exit(3)

    signal.signal(signal.SIGTERM, lambda *_: abort("timed out"))

    def watchdog() -> None:
        idle = 0.0  # time the writer has been set up (shared memory exists) with no live worker
        while idle < WRITER_GRACE_S:  # a healthy writer finishes within moments of its worker exiting
            time.sleep(0.2)
            if os.getppid() != samples.parent:
                abort("the encoding process is gone")
            started = isinstance(getattr(writer, "metadata_sm", None), shared_memory.SharedMemory)
            idle = idle + 0.2 if started and not multiprocessing.active_children() else 0.0
        abort("an ffcv writer worker failed (see its traceback above)")

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        # ffcv's from_indexed_dataset, less its list of (position, index) tuples, ~600 bytes an image here: the
        # same work handed to its worker as (position, index) arrays of WORK_CHUNK rows.
        positions = np.arange(samples.count)
        work = [np.stack([part, part], axis=1) for part in np.array_split(positions, -(-samples.count // WORK_CHUNK))]
        writer._write_common(samples.count, work, ffcv.writer.worker_job_indexed_dataset, (samples,))
    except Exception as e:  # reported as one line by the parent
        abort(f"{e.__class__.__name__}: {e}")
    os._exit(0)


def write_fields(path: Path, fields: dict[str, Any], count: int, batches: Iterable[Batch], timeout_s: float,
                 desc: str = "") -> None:
    """Write `count` samples, arriving as `batches`, to `path` atomically, bounded by `timeout_s`; DataError (and no
    file) on failure. Each sample is (image, label, its position in the file)."""
    atomic_write(Path(path), partial(_write_in_child, fields=fields, count=count, batches=batches,
                                     timeout_s=timeout_s, path=path, desc=desc or Path(path).name))


def _write_in_child(tmp: Path, *, fields: dict[str, Any], count: int, batches: Iterable[Batch], timeout_s: float,
                    path: Path, desc: str) -> None:
    from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter

    # One worker makes the output byte-identical for identical input (several race for pages);
    # 2 MiB pages (ffcv's minimum, default 8) hold ~160 64x64x3 images and keep small files small.
    writer = DatasetWriter(str(tmp), fields, page_size=MIN_PAGE_SIZE, num_workers=1)
    ctx = multiprocessing.get_context("fork")  # writer and pipes are inherited, not pickled
    receive, send = ctx.Pipe(duplex=False)  # the host's one-line reason when it fails
    inlet, outlet = ctx.Pipe(duplex=False)  # the batches
    host = ctx.Process(target=_writer_host, args=(writer, _Streamed(inlet, count, os.getpid()), send, desc, outlet))
    outbox: queues.Queue = queues.Queue(QUEUED_BATCHES)  # sent on by a thread: a full pipe never blocks the checks
    deadline = time.monotonic() + timeout_s

    def sender() -> None:
        with contextlib.suppress(OSError):  # the reader is gone: the writer failed or was stopped
            while (batch := outbox.get()) is not None:
                outlet.send(batch)

    def failed() -> DataError:
        reason = f"writer exited with code {host.exitcode}" if host.exitcode is not None else "timed out"
        _stop(host)
        reason = receive.recv() if receive.poll() else reason
        return DataError(f"{path}: writing the .beton failed ({reason}); nothing was written")

    def put(batch: Batch | None) -> None:
        while True:
            if host.exitcode is not None or time.monotonic() > deadline:
                raise failed()
            with contextlib.suppress(queues.Full):
                return outbox.put(batch, timeout=POLL_S)

    try:
        host.start()
        inlet.close()
        threading.Thread(target=sender, daemon=True).start()
        sent = 0
        for batch in batches:
            sent += len(batch[1])
            if sent > count:
                raise DataError(f"{path}: more than the {count} images announced arrived; nothing was written")
            put(batch)
        if sent != count:
            raise DataError(f"{path}: {sent} images arrived, {count} announced; nothing was written")
        put(None)
        host.join(max(0.0, deadline - time.monotonic()))
        if host.exitcode != 0:
            raise failed()
    finally:
        if host.pid is not None and host.exitcode is None:  # interrupted, or the input failed
            _stop(host)
        with contextlib.suppress(queues.Full):
            outbox.put_nowait(None)  # the sender's last batch fails on the closed pipe, then it ends
        for end in (receive, send, inlet, outlet):
            end.close()


def _stop(host: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM first (the host then frees ffcv's shared memory), then SIGKILL its whole process group."""
    if host.exitcode is None:
        host.terminate()
        host.join(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(host.pid, signal.SIGKILL)  # and the worker it may leave behind
    host.join()


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
