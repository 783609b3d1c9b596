"""FFCV loaders over the encoded .beton files: (images, labels, indices) batches already on the device, the indices
making distributed evaluation exact; a file beyond the loader's memory is read in quasi-random order (docs/design.md).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist

from data.errors import DataError
from data.writer import check_beton

RANDOM, QUASI_RANDOM = "random", "quasi_random"  # training orders; the name is part of a run's identity
PAGE_CACHE_SHARE = 0.75  # of the machine's memory (or its cgroup's limit) that a training file may fill


def _world_size(distributed: bool) -> int:
    if not distributed:
        return 1
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("make_loader(distributed=True) needs an initialised torch.distributed process group "
                           "(call torch.distributed.init_process_group, or let Accelerate do it, first)")
    return dist.get_world_size()


def default_num_workers() -> int:
    """The CPUs available to this process, shared among the ranks on this machine."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_ranks))


def loader_memory() -> int:
    """Bytes of page cache a training file may fill: PAGE_CACHE_SHARE of the machine's memory, or of its cgroup's
    limit where lower. A fixed share, not what happens to be free: the order it decides is part of a run's
    identity, so a resumed run must decide as its first session did."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    except (OSError, ValueError):  # no cgroup v2 limit ("max")
        pass
    return int(PAGE_CACHE_SHARE * memory)


def training_order(file_bytes: int, processes: int, memory_bytes: int | None = None) -> tuple[str, str]:
    """(RANDOM or QUASI_RANDOM, why in words) for a training file of `file_bytes` read by `processes` processes
    on a machine whose loader may use `memory_bytes` (default `loader_memory()`)."""
    memory = loader_memory() if memory_bytes is None else memory_bytes
    if processes > 1:
        return RANDOM, (f"{processes} processes read it through the page cache in random order (ffcv's quasi-random "
                        "order does not run distributed)")
    if file_bytes <= memory:
        return RANDOM, f"it fits in the {memory / 1e9:,.1f} GB the loader may use: page cache, random order"
    return QUASI_RANDOM, (f"it exceeds the {memory / 1e9:,.1f} GB the loader may use: read a few pages at a time, "
                          "in quasi-random order, without the page cache")


def _order_of_seed_and_epoch(order) -> None:
    """Make ffcv's QuasiRandom draw each epoch from the page table as it was when the loader was built (it shuffles
    the table in place), so that an epoch's order depends on the seed and the epoch alone."""
    table, draw = order.page_to_samples_array.copy(), order.sample_order

    def sample_order(epoch: int):
        order.page_to_samples_array = table.copy()
        return draw(epoch)

    order.sample_order = sample_order


def make_loader(path: Path, *, batch_size: int, train: bool, device: torch.device, seed: int = 0,
                distributed: bool = False, num_workers: int | None = None, drop_last: bool | None = None,
                order: str = RANDOM):
    """A Loader over `path` yielding (images, labels, indices) on `device` (see the module docstring).

    Train: `order` (RANDOM or QUASI_RANDOM) from `seed` and the epoch, drop_last by default. Eval: file
    order through the page cache, no drop. Raises DataError when the .beton is missing or damaged.
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.decoders import NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.fields.ndarray import NDArrayField
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    quasi_random = train and order == QUASI_RANDOM
    if quasi_random and distributed:
        raise DataError(f"{path}: ffcv's quasi-random order does not run distributed; expected the random order "
                        "(the page cache) for several processes")
    _world_size(distributed)
    check_beton(path)
    image_field = Reader(str(path)).handlers["image"]
    decoder = NDArrayDecoder() if isinstance(image_field, NDArrayField) else SimpleRGBImageDecoder()

    def to_device() -> ToDevice:
        # Blocking copies, on ffcv's own stream and thread: its pinned host buffers are reused a few
        # batches later, and a non-blocking copy still queued behind a lagging GPU would read a newer batch.
        return ToDevice(device, non_blocking=False)

    loader = Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers if num_workers is not None else default_num_workers(),
        os_cache=not quasi_random,
        order=OrderOption.QUASI_RANDOM if quasi_random else OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
        distributed=distributed,
        seed=seed,
        drop_last=train if drop_last is None else drop_last,
        pipelines={
            "image": [decoder, ToTensor(), to_device()],
            "label": [IntDecoder(), ToTensor(), Squeeze(1), to_device()],
            "index": [IntDecoder(), ToTensor(), Squeeze(1), to_device()],
        },
    )
    if quasi_random:
        _order_of_seed_and_epoch(loader.traversal_order)
    return loader


@lru_cache(maxsize=8)
def shared_loader(path: Path, *, batch_size: int, train: bool, device: torch.device, seed: int, distributed: bool,
                  num_workers: int, order: str = RANDOM):
    """`make_loader`, memoised for the process: a suite's runs on the same data, batch and seed reuse the
    loaders instead of paying ffcv's pipeline compilation (about a second each) three times per run.
    Safe because a run sets the train loader's epoch before each pass and evaluation is sequential."""
    return make_loader(path, batch_size=batch_size, train=train, device=device, seed=seed, distributed=distributed,
                       num_workers=num_workers, order=order)


def set_loader_epoch(loader, epoch: int) -> None:
    """Make the next `iter(loader)` produce epoch `epoch`'s order (for resuming a run)."""
    loader.next_epoch = epoch
