"""A run's measurements beyond training itself (cold start, energy, the device's state, the trained model's inference,
and with several processes what communication costs), as context managers around its training and testing with one
typed result (docs/design.md).
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch._dynamo.utils import calculate_time_spent
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState

from bench.measuring.energy import EnergyCounter, EnergyLog, energy_metrics, summed
from bench.measuring.inference import inference_metrics, measure_inference
from bench.measuring.link import bandwidth, time_all_reduce
from bench.measuring.measure import synchronize
from bench.measuring.watch import Watch, device_flags
from bench.suite.config import RunConfig, RunContext
from bench.training.runtime import synthetic_batches
from data.datasets import get_spec
from data.encode import IMAGE_SIZE

if TYPE_CHECKING:  # the loop's Training holds its probes: imported for the annotation only
    from bench.training.loop import Training


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far (dynamo's own timer of whole-frame compiles)."""
    return calculate_time_spent().get("total_wall_time", 0.0)


@dataclass(frozen=True)
class Measured:
    """What the probes measured, for the record: run metrics (each a declared metric), every
    process's device snapshots, and the inference measurement in full (None when not timed)."""

    metrics: dict[str, Any]
    device_state: list[dict[str, Any]] = field(default_factory=list)
    inference: dict[str, Any] | None = None
    comm_probe: dict[str, Any] | None = None  # the communication probe in full (None: one process, or none asked)


class RunProbes:
    """One run's extra measurements; every process makes one (`track` and `measured` are collectives)."""

    def __init__(self, accelerator: Accelerator, started: float) -> None:
        self.accelerator, self.started = accelerator, started
        self.energy = EnergyLog(EnergyCounter(reason="not tracked"))
        self.watch: Watch | None = None
        self.first_step_at: float | None = None  # time.time() when this session's first step was done on the device
        self._compile_before = 0.0

    @contextmanager
    def track(self) -> Iterator[RunProbes]:
        """The run, from its start to the end of testing: the energy counter and the compile clock."""
        device = self.accelerator.device
        own_pids = set(gather_object([os.getpid()]))  # the run's own processes are not "other processes"
        self.energy = EnergyLog(EnergyCounter.open(device, self.accelerator.is_local_main_process))
        self.watch = Watch(device, own_pids)
        self._compile_before = compile_seconds()
        yield self

    @contextmanager
    def training(self) -> Iterator[None]:
        """The run's training: the device's snapshot when it ends (the loop takes the one when its window opens)."""
        yield
        self.watch.stop()

    def window_opened(self) -> None:
        """The timed window has opened for the first time this session: the device's state now."""
        self.watch.start()

    def step_done(self) -> None:
        """After every training step: the first ends the cold start (one host sync, once per session)."""
        if self.first_step_at is None:
            synchronize(self.accelerator.device)
            self.first_step_at = time.time()

    def validated(self) -> None:
        """At every history row: the energy counter, for the energy to target."""
        self.energy.mark()

    def measured(self, cfg: RunConfig, context: RunContext, training: Training, timed_images: int,
                 history: list[dict], resumed: bool) -> Measured:
        """Once testing is done, on every process: energy (ending here), cold start and the device's flags; then the
        trained model's inference, timed by the main process while the others wait; then, with several processes,
        what their communication costs (`probe_communication`)."""
        accelerator = self.accelerator
        energy = summed(gather_object([self.energy.reading()]))
        target = cfg.target_accuracy
        target_row = next((index for index, row in enumerate(history) if target is not None
                           and row["val_acc"] >= target), None)
        states = gather_object([{"rank": accelerator.process_index, **self.watch.states()}])
        metrics = {
            "time_to_first_step_s": self.first_step_at - self.started if self.first_step_at is not None else None,
            "compile_s": compile_seconds() - self._compile_before if cfg.compile_mode else None,  # inference's apart
            **device_flags(states),
            **energy_metrics(energy, self.energy.counter, timed_images, target_row, resumed),
        }
        timed = None
        if context.inference is not None and accelerator.is_main_process:
            bare = accelerator.unwrap_model(training.model, keep_torch_compile=False)
            preprocess = training.eval_preprocess
            images = torch.randint(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, len(preprocess.mean)), dtype=torch.uint8,
                                   device=accelerator.device)
            timed = measure_inference(bare, preprocess(images)[0], cfg.precision, cfg.channels_last,
                                      cfg.compile_mode, context.inference)
        accelerator.wait_for_everyone()
        comm = probe_communication(cfg, training, accelerator, context.comm_probe_repeats, context.comm_probe_steps)
        return Measured(metrics=metrics | inference_metrics(timed) | comm.metrics, device_state=states, inference=timed,
                        comm_probe=comm.detail)


# ----- what communication costs, after the run ------------------------------------------------------------------
COMM_METRICS = ("comm_step_ms", "compute_step_ms", "exposed_comm_ms", "exposed_comm_std_ms", "exposed_comm_share",
           "rank_skew", "grad_bytes", "wire_bytes", "bucket_algbw_gbs", "bucket_busbw_gbs", "grad_algbw_gbs",
           "grad_busbw_gbs")
HALF_HOOKS = ("fp16", "bf16")  # hooks that cast each bucket to 16 bits for the all-reduce


@dataclass(frozen=True)
class CommProbe:
    metrics: dict[str, Any]  # the run metrics COMM_METRICS
    detail: dict[str, Any] | None  # the record's comm_probe (None: not measured)


def powersgd_state(model: torch.nn.Module) -> PowerSGDState | None:
    """The PowerSGD state Accelerate registered on the run's DDP model (a compiled model wraps it), if any."""
    ddp = getattr(model, "_orig_mod", model)
    return next((state for _, state in getattr(ddp, "_comm_hooks", []) if isinstance(state, PowerSGDState)), None)


def probe_communication(cfg: RunConfig, training: Training, accelerator: Accelerator, repeats: int,
                        steps: int) -> CommProbe:
    """The run's steps with DDP's gradient synchronisation and under `no_sync`, alternating, in repeats whose spread is
    kept (the synced step minus the unsynced one is the communication a step waits for), then the all-reduce of one
    bucket and of the whole gradient. After the run only: `no_sync` would make training's replicas diverge, and the
    probe's optimizer steps change weights nothing reads any more. On every process; blank for one or no repeats."""
    model, device, world = training.model, accelerator.device, accelerator.num_processes
    grad_numel = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    grad_bytes = grad_numel * 4  # fp32 gradients: DDP reduces in the parameters' dtype, whatever the autocast
    if world == 1 or repeats == 0:
        return CommProbe({**dict.fromkeys(COMM_METRICS), "grad_bytes": grad_bytes}, None)
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
    counted[:] = [0, 0]  # the wire bytes are per timed step: the warm-up's are not among them
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
