"""A run's measurements beyond training itself (cold start, energy, the device's state, the trained model's inference),
as context managers around its training and testing with one typed result (docs/design.md).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch._dynamo.utils import calculate_time_spent

from bench.measuring.energy import EnergyCounter, EnergyLog, energy_metrics, summed
from bench.measuring.inference import InferenceOptions, inference_metrics, measure_inference
from bench.measuring.measure import synchronize
from bench.measuring.watch import Watch, device_flags
from bench.suite.config import RunConfig
from data.augment import DevicePreprocess
from data.encode import IMAGE_SIZE


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

    def measured(self, cfg: RunConfig, inference: InferenceOptions | None, model: torch.nn.Module,
                 preprocess: DevicePreprocess, timed_images: int, history: list[dict], resumed: bool) -> Measured:
        """Once testing is done, on every process: energy (ending here, before inference), cold start, the device's
        flags, then the trained model's inference, timed by the main process while the others wait."""
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
        if inference is not None and accelerator.is_main_process:
            bare = accelerator.unwrap_model(model, keep_torch_compile=False)
            images = torch.randint(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, len(preprocess.mean)), dtype=torch.uint8,
                                   device=accelerator.device)
            timed = measure_inference(bare, preprocess(images)[0], cfg.precision, cfg.channels_last,
                                      cfg.compile_mode, inference)
        accelerator.wait_for_everyone()
        return Measured(metrics=metrics | inference_metrics(timed), device_state=states, inference=timed)
