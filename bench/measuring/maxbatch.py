"""The largest batch that trains (`bench.speed --find-max-batch`): doubling, then bisection on out-of-memory; on a CPU,
which has no OOM error to catch, no batch whose predicted peak exceeds the memory budget is tried (docs/design.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import psutil
import torch

HOST_SHARE = 0.8  # of the host's free memory a CPU search may plan to use


@dataclass(frozen=True)
class Probe:
    batch: int
    status: str  # "ok", "oom" (it raised), or "predicted" (not tried: predicted beyond the memory budget)
    peak_bytes: int | None = None


@dataclass(frozen=True)
class Search:
    batch: int | None  # the largest batch measured to fit (None: not even the first)
    limit: str  # what stopped the search: "oom", "cap" or "memory (predicted)"
    probes: tuple[Probe, ...]

    def to_json(self, cap: int) -> dict:
        return {"batch": self.batch, "limit": self.limit, "cap": cap, "probes": [asdict(probe) for probe in self.probes]}


def predicted_peak(batch: int, fitted: list[Probe]) -> float | None:
    """The peak memory at `batch` on the line through the two largest batches that fitted (None with fewer)."""
    if len(fitted) < 2:
        return None
    low, high = sorted(fitted, key=lambda probe: probe.batch)[-2:]
    per_image = max(0.0, (high.peak_bytes - low.peak_bytes) / (high.batch - low.batch))
    return high.peak_bytes + per_image * (batch - high.batch)


def search(probe: Callable[[int], int | None], cap: int, budget_bytes: float | None = None) -> Search:
    """Double from 1 to `cap`, then bisect between the last batch that fitted and the first that did not; `probe(batch)`
    returns the peak bytes or None (out of memory), and a batch predicted beyond `budget_bytes` is never tried."""
    probes: list[Probe] = []

    def fits(batch: int) -> bool:
        fitted = [p for p in probes if p.status == "ok"]
        predicted = predicted_peak(batch, fitted)
        if budget_bytes is not None and predicted is not None and predicted > budget_bytes:
            probes.append(Probe(batch, "predicted", int(predicted)))
            return False
        peak = probe(batch)
        probes.append(Probe(batch, "ok" if peak is not None else "oom", peak))
        return peak is not None

    good, bad, batch = None, None, 1
    while bad is None:
        if fits(batch):
            good = batch
            if batch == cap:
                break
            batch = min(cap, batch * 2)
        else:
            bad = batch
    while bad is not None and good is not None and bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    if bad is None:
        return Search(good, "cap", tuple(probes))
    stopped = next(p for p in probes if p.batch == bad)
    return Search(good, "memory (predicted)" if stopped.status == "predicted" else "oom", tuple(probes))


def memory_budget(device: torch.device, memory_limit_gb: float | None) -> float | None:
    """The peak memory (as measured: the process's RSS) a CPU search may plan for; None on a GPU, where running out
    raises an exception instead of waking the OOM killer."""
    if device.type != "cpu":
        return None
    room = HOST_SHARE * psutil.virtual_memory().available
    return psutil.Process().memory_info().rss + min(room, memory_limit_gb * 2**30 if memory_limit_gb else room)


def describe(found: Search, cap: int) -> str:
    """One line for the console: the batch and what stopped the search."""
    if found.batch is None:
        return f"no batch fits (batch {found.probes[0].batch}: {found.limit})"
    if found.limit == "cap":
        return f"max batch {found.batch}: the cap (--batch-cap {cap}) fits"
    stopped = min((p for p in found.probes if p.status != "ok" and p.batch > found.batch), key=lambda p: p.batch)
    if found.limit == "oom":
        return f"max batch {found.batch}: batch {stopped.batch} ran out of memory"
    return (f"max batch {found.batch}: batch {stopped.batch} not tried, its predicted peak of "
            f"{stopped.peak_bytes / 2**30:.2f} GiB exceeds the memory budget (a CPU's OOM killer raises no error)")
