"""What a run of several processes spends on communication, measured after the run in a short probe of its own.

The same training steps (the run's model, batch, precision and DDP settings, on device-resident inputs) with DDP's
gradient synchronisation and under `no_sync`, alternating, in repeats whose spread is kept: the synced step minus
the unsynced one is the communication the step waits for. Never inside training, whose replicas `no_sync` would make
diverge, nor in its timed window or time to target: by now the run is tested and timed, and its weights, which the
probe's optimizer steps change, are read by nothing. Then the all-reduce of one DDP bucket and of the whole gradient,
timed alone (bench/measuring/link.py).
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState

from bench.measuring.link import bandwidth, time_all_reduce
from bench.measuring.measure import synchronize
from bench.suite.config import RunConfig
from bench.training.loop import Training
from bench.training.runtime import synthetic_batches
from data.datasets import get_spec

METRICS = ("comm_step_ms", "compute_step_ms", "exposed_comm_ms", "exposed_comm_std_ms", "exposed_comm_share",
           "rank_skew", "grad_bytes", "wire_bytes", "bucket_algbw_gbs", "bucket_busbw_gbs", "grad_algbw_gbs",
           "grad_busbw_gbs")
HALF_HOOKS = ("fp16", "bf16")  # hooks that cast each bucket to 16 bits for the all-reduce


@dataclass(frozen=True)
class CommProbe:
    metrics: dict[str, Any]  # the run metrics METRICS (bench/measuring/metrics.py)
    detail: dict[str, Any] | None  # the record's comm_probe (None: not measured)


def powersgd_state(model: torch.nn.Module) -> PowerSGDState | None:
    """The PowerSGD state Accelerate registered on the run's DDP model (a compiled model wraps it), if any."""
    ddp = getattr(model, "_orig_mod", model)
    return next((state for _, state in getattr(ddp, "_comm_hooks", []) if isinstance(state, PowerSGDState)), None)


def probe_communication(cfg: RunConfig, training: Training, accelerator: Accelerator, repeats: int,
                        steps: int) -> CommProbe:
    """The probe, on every process (its timings are collectives); all blank for one process or no repeats."""
    model, device, world = training.model, accelerator.device, accelerator.num_processes
    grad_numel = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    grad_bytes = grad_numel * 4  # fp32 gradients: DDP reduces in the parameters' dtype, whatever the autocast
    if world == 1 or repeats == 0:
        return CommProbe({**dict.fromkeys(METRICS), "grad_bytes": grad_bytes}, None)
    images, labels = next(synthetic_batches(cfg.batch_size, get_spec(cfg.dataset), device))
    powersgd = powersgd_state(model)
    counted = [0, 0]  # PowerSGD's elements before and after compression over the synced steps

    def window(synced: bool, count: int) -> float:
        """Milliseconds per step over `count` steps, every process starting together."""
        accelerator.wait_for_everyone()
        synchronize(device)
        before = powersgd.compression_stats()[1:] if powersgd and synced else (0, 0)
        started = time.perf_counter()
        with nullcontext() if synced else accelerator.no_sync(model):
            for _ in range(count):
                if training.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                accelerator.backward(training.criterion(model(training.train_preprocess(images, training.generator)),
                                                        labels))
                training.optimizer.step()
                training.optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        milliseconds = (time.perf_counter() - started) / count * 1e3
        if powersgd and synced:
            for index, total in enumerate(powersgd.compression_stats()[1:]):
                counted[index] += total - before[index]
        return milliseconds

    model.train()
    for synced in (True, False):  # warm-up, untimed
        window(synced, 1)
    times: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):  # alternating which comes first, so that a drift favours neither
        for synced in (True, False) if repeat % 2 == 0 else (False, True):
            times[synced].append(window(synced, steps))
    ranks = gather_object([(times[True], times[False])])  # per process: (synced, unsynced) per repeat
    synced = [max(rank[0][repeat] for rank in ranks) for repeat in range(repeats)]  # a step is its slowest process's
    unsynced = [max(rank[1][repeat] for rank in ranks) for repeat in range(repeats)]
    exposed = [with_sync - without for with_sync, without in zip(synced, unsynced)]
    skew = [max(rank[1][repeat] for rank in ranks) / min(rank[1][repeat] for rank in ranks) - 1
            for repeat in range(repeats)]
    bucket_bytes = min(grad_bytes, (cfg.communication.bucket_cap_mb or DistributedDataParallelKwargs().bucket_cap_mb)
                       * 2**20)
    all_reduce = {name: bandwidth(nbytes, time_all_reduce(nbytes, device, repeats), world)
                  for name, nbytes in (("bucket", bucket_bytes), ("grad", grad_bytes))}
    wire_bytes, wire_source = wire(cfg.communication.comm_hook, grad_bytes, counted, repeats * steps)
    metrics = {
        "comm_step_ms": statistics.median(synced), "compute_step_ms": statistics.median(unsynced),
        "exposed_comm_ms": statistics.median(exposed),
        "exposed_comm_std_ms": statistics.stdev(exposed) if repeats > 1 else None,
        "exposed_comm_share": statistics.median(exposed) / statistics.median(synced),
        "rank_skew": statistics.median(skew), "grad_bytes": grad_bytes, "wire_bytes": wire_bytes,
        **{f"{name}_{kind}_gbs": all_reduce[name][f"{kind}_gbs"] for name in all_reduce for kind in ("algbw", "busbw")},
    }
    detail = {"repeats": repeats, "steps": steps, "world_size": world, "batch_size": cfg.batch_size,
              "synced_step_ms": [rank[0] for rank in ranks], "no_sync_step_ms": [rank[1] for rank in ranks],
              "grad_bytes": grad_bytes, "wire_bytes": wire_bytes, "wire_source": wire_source,
              "all_reduce": all_reduce}
    return CommProbe(metrics, detail)


def wire(hook: str, grad_bytes: int, counted: list[int], synced_steps: int) -> tuple[int, str]:
    """(bytes per step each process puts into the gradient all-reduces, how that is known) under `hook`."""
    if hook in HALF_HOOKS:
        return grad_bytes // 2, f"{hook} hook: every bucket cast to 16 bits"
    if counted[0]:
        return counted[1] * 4 // synced_steps, "PowerSGD's own counters (compression_stats) over the synced steps"
    return grad_bytes, "no compression"
