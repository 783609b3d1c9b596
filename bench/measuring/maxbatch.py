"""The largest batch that trains: `python -m bench.speed --find-max-batch --batch-cap N`.

Which batch fits decides what a card can train (and at which learning rate), so the speed sweep can search it per
model, precision, memory format and compile mode: training steps at batch 1, 2, 4, ... up to --batch-cap, then, once
a batch runs out of memory, bisection between the last batch that fitted and the first that did not. The answer is
the largest batch *measured* to fit (never a smaller one passed off as the one asked for); its point is then timed
like any sweep point and recorded with `search: max-batch` and the search's probes, so the report shows it beside
its peak memory.

On a GPU running out of memory raises an exception, which the search catches. On a CPU the host's memory is the
limit and the kernel's OOM killer ends the process without one, so the search never tries a batch whose peak memory,
predicted from those measured (the memory per image between the last two probes), would exceed the memory the
process may use: 80 % of what the host has free when the search starts, or --memory-limit-gb more than it uses then
(on a CPU that option is this budget for the search, not an address-space cap); it stops there and says so
(`limit: memory (predicted)`).
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
    """Double from 1 to `cap`, then bisect between the last batch that fitted and the first that did not.

    `probe(batch)` trains at `batch` and returns its peak memory in bytes, or None when it ran out of memory. With
    `budget_bytes`, a batch whose predicted peak exceeds it is never tried (it counts as not fitting)."""
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
