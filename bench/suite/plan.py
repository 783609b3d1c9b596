"""What a suite is about to do, said before it does it (runs, processes, global batch, peak lr, precision, and a warning
beyond the batch a recipe was checked at): on an 8-GPU box the global batch is 8x what --batch-size says.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from bench.suite.config import RunConfig, SuiteConfig
from bench.suite.recipes import CHECKED_GLOBAL_BATCH


def listing(values: Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def batch_and_lr(runs: Sequence[RunConfig]) -> str:
    """The global batch(es) and the peak learning rate(s) the runs train at, in words: `global batch 4096 (512 x 8
    processes), peak lr 1.6 (vgg16, vgg16_improved: 0.16)`."""
    batches = listing(f"{run.global_batch} ({run.batch_size} x {run.world_size} "
                      f"process{'' if run.world_size == 1 else 'es'})" for run in runs)
    by_lr: dict[float, list[str]] = {}
    for run in runs:
        by_lr.setdefault(run.peak_lr, []).append(run.model)
    common = max(by_lr, key=lambda lr: len(by_lr[lr]))
    others = "; ".join(f"{listing(models)}: {lr:.4g}" for lr, models in by_lr.items() if lr != common)
    return f"global batch {batches}, peak lr {common:.4g}" + (f" ({others})" if others else "")


def suite_line(suite: SuiteConfig, processes: int, device: str) -> str:
    """The suite's first line: what runs where, at which global batch, learning rate and precision."""
    line = f"{len(suite.runs)} run(s), {processes} process(es) on {device}"
    if suite.runs:
        line += f", {batch_and_lr(suite.runs)}"
    line += f", precision {suite.precision}"
    if suite.communication.words():  # DDP's settings and SyncBatchNorm, where they are not the defaults
        line += f", communication: {suite.communication.words()}"
    line += f", results in {suite.context.results_dir}/"
    if suite.overrides:
        line += f"; set by options: {' '.join(suite.overrides)}"
    return line


def batch_warnings(runs: Sequence[RunConfig]) -> list[str]:
    """One line per recipe whose runs train at a global batch beyond the largest it was checked at."""
    beyond: dict[str, RunConfig] = {}  # recipe -> its run at the largest global batch
    for run in runs:
        checked = CHECKED_GLOBAL_BATCH.get(run.recipe.name)
        largest = beyond.get(run.recipe.name)
        if checked is not None and run.global_batch > checked and (not largest or run.global_batch > largest.global_batch):
            beyond[run.recipe.name] = run
    lines = []
    for name, run in beyond.items():
        lr = "the learning rate scaled linearly with it" if run.recipe.scale_lr else "the recipe's learning rate unscaled"
        lines.append(f"warning: global batch {run.global_batch} is beyond the {CHECKED_GLOBAL_BATCH[name]} that recipe "
                     f"{name} was checked at ({lr}); a smaller --batch-size, or fewer processes (accelerate launch "
                     "--num_processes N), keeps to it")
    return lines


def dry_run_table(runs: Sequence[RunConfig]) -> pd.DataFrame:
    """One row per resolved run: what it trains, and at which global batch, learning rate, precision and epochs."""
    return pd.DataFrame([{
        "run id": run.run_id, "model": run.model, "dataset": run.dataset + (" (synthetic)" if run.synthetic else ""),
        "recipe": run.recipe.name, "epochs": run.epochs, "global batch": run.global_batch,
        "per process": run.batch_size, "peak lr": f"{run.peak_lr:.4g}", "precision": run.precision,
        "target %": f"{run.target_accuracy * 100:.2f}" if run.target_accuracy is not None else "",
    } for run in runs])
