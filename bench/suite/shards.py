"""`--shard I/N`: the I-th of N disjoint parts of a suite, balanced by expected training FLOPs (longest first to the
lightest part) and deterministic, so that every job of an array computes the same split alone.
"""
from __future__ import annotations

import argparse
import heapq
from typing import TYPE_CHECKING

from data.datasets import get_spec
from data.encode import synthetic_val_size
from models.facts import model_facts

if TYPE_CHECKING:
    from bench.suite.config import RunConfig


def shard_spec(text: str) -> tuple[int, int]:
    """argparse type: "I/N" with 1 <= I <= N -> (I, N)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 1 <= int(index) <= int(count):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N (e.g. 2/8), got {text!r}")
    return int(index), int(count)


def run_cost(cfg: RunConfig) -> float:
    """Expected training cost of a run in GFLOPs: per image x training images x epochs."""
    spec = get_spec(cfg.dataset)
    images = cfg.synthetic_train - synthetic_val_size(cfg.synthetic_train) if cfg.synthetic else spec.train_size
    return model_facts(cfg.model, spec.channels, num_classes=spec.num_classes).train_gflops * images * cfg.epochs


def shard_runs(runs: tuple[RunConfig, ...], index: int, count: int) -> tuple[RunConfig, ...]:
    """The runs of part `index` (1-based) of `count`, in the suite's own order."""
    loads = [(0.0, part) for part in range(count)]  # (cost so far, part): a min-heap
    owner: dict[str, int] = {}
    for cost, run_id in sorted(((run_cost(cfg), cfg.run_id) for cfg in runs), key=lambda item: (-item[0], item[1])):
        load, part = heapq.heappop(loads)
        owner[run_id] = part
        heapq.heappush(loads, (load + cost, part))
    return tuple(cfg for cfg in runs if owner[cfg.run_id] == index - 1)
