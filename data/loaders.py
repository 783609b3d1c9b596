"""FFCV loaders over the encoded .beton files: (images, labels, indices) batches already on the device.

Images arrive as uint8 (B, 64, 64, C), channels last and not normalised (the device-side
augmentation/normalisation lives in data/augment.py). Labels and indices are int64 (B,); `indices`
are positions within the split file, which makes distributed evaluation exact (see below).

Things to know (ffcv 1.0.2):
- Batches are views into buffers the loader reuses a few batches later: `.clone()` anything kept
  past the next iteration.
- Creating a Loader JIT-compiles its pipeline (1-5 s): build each loader once (`shared_loader`), not per epoch.
- `num_workers` is the number of numba threads, and ffcv calls `torch.set_num_threads(num_workers)`
  for the whole process whenever a loader is created or iterated.
- Only decoders (compiled) come before ToTensor here; a compiled op after ToTensor hangs ffcv.

Ordering (ffcv/traversal_order/random.py, sequential.py, loader/loader.py):
- Each `iter(loader)` uses epoch `loader.next_epoch` and then increments it; `set_loader_epoch`
  sets it so that a resumed run continues with the same order.
- Train, single process: the order is `np.random.default_rng(seed + epoch).permutation(n)`;
  with drop_last the last `n % batch_size` samples of that permutation are skipped (different ones
  each epoch).
- distributed=True: torch's DistributedSampler(shuffle=train, seed=seed, drop_last=False) with
  set_epoch(epoch): one permutation (torch.randperm seeded with seed + epoch) shared by all ranks,
  padded by repeating its first samples up to ceil(n / world) * world, then rank r takes positions
  r, r + world, ... So every rank sees ceil(n / world) samples, and `ceil(n / world) * world - n`
  samples are seen twice per epoch; drop_last then trims each rank's list to whole batches.
  Evaluation (sequential) pads the same way with the first samples of the file: de-duplicate by
  `indices` to score every test image exactly once.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist

from data.writer import check_beton


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


def make_loader(path: Path, *, batch_size: int, train: bool, device: torch.device, seed: int = 0,
                distributed: bool = False, num_workers: int | None = None, os_cache: bool = True,
                drop_last: bool | None = None):
    """A Loader over `path` yielding (images, labels, indices) on `device` (see the module docstring).

    Train: random order from `seed` and the epoch, drop_last by default. Eval: file order, no drop.
    Raises DataError when the .beton is missing or damaged.
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.decoders import NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.fields.ndarray import NDArrayField
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    _world_size(distributed)
    check_beton(path)
    image_field = Reader(str(path)).handlers["image"]
    decoder = NDArrayDecoder() if isinstance(image_field, NDArrayField) else SimpleRGBImageDecoder()

    def to_device() -> ToDevice:
        # Blocking copies, on ffcv's own stream and thread: its pinned host buffers are reused a few
        # batches later, and a non-blocking copy still queued behind a lagging GPU would read a newer batch.
        return ToDevice(device, non_blocking=False)

    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers if num_workers is not None else default_num_workers(),
        os_cache=os_cache,
        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
        distributed=distributed,
        seed=seed,
        drop_last=train if drop_last is None else drop_last,
        pipelines={
            "image": [decoder, ToTensor(), to_device()],
            "label": [IntDecoder(), ToTensor(), Squeeze(1), to_device()],
            "index": [IntDecoder(), ToTensor(), Squeeze(1), to_device()],
        },
    )


@lru_cache(maxsize=8)
def shared_loader(path: Path, *, batch_size: int, train: bool, device: torch.device, seed: int, distributed: bool,
                  num_workers: int):
    """`make_loader`, memoised for the process: a suite's runs on the same data, batch and seed reuse the
    loaders instead of paying ffcv's pipeline compilation (about a second each) three times per run.
    Safe because a run sets the train loader's epoch before each pass and evaluation is sequential."""
    return make_loader(path, batch_size=batch_size, train=train, device=device, seed=seed, distributed=distributed,
                       num_workers=num_workers)


def set_loader_epoch(loader, epoch: int) -> None:
    """Make the next `iter(loader)` produce epoch `epoch`'s order (for resuming a run)."""
    loader.next_epoch = epoch
