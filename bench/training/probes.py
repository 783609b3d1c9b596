"""What a run measures beyond training itself, wired into one object so that bench/training/train.py stays about training:
cold start (time to the first step, compile seconds), energy (bench/measuring/energy.py), the device's state at the ends of
the timed window (bench/measuring/watch.py), and, after testing, the trained model's inference (bench/measuring/inference.py).

A run creates its RunProbes before anything else (the energy counter and the clock start with the run), attaches
them to its Training (the loop opens the watch and the energy windows, bench/training/loop.py), and calls `finish` once
testing is done: every process joins its collectives, the main process alone times inference.
"""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch._dynamo.utils import calculate_time_spent

from bench.measuring.energy import EnergyCounter, EnergyLog, energy_metrics, summed
from bench.measuring.inference import inference_metrics, measure_inference
from bench.measuring.watch import Watch, device_flags
from bench.suite.config import RunConfig
from bench.training.loop import Training
from data.encode import IMAGE_SIZE


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far (dynamo's own timer of whole-frame compiles)."""
    return calculate_time_spent().get("total_wall_time", 0.0)


class RunProbes:
    """One run's extra measurements; every process makes one (its constructor is a collective)."""

    def __init__(self, accelerator: Accelerator, started: float) -> None:
        self.started = started
        own_pids = set(gather_object([os.getpid()]))  # the run's own processes are not "other processes"
        self.energy = EnergyLog(EnergyCounter.open(accelerator.device, accelerator.is_local_main_process))
        self.watch = Watch(accelerator.device, own_pids)
        self.compile_before = compile_seconds()
        self.compile_s: float | None = None

    def attach(self, training: Training) -> None:
        training.energy, training.watch = self.energy, self.watch

    def training_done(self) -> None:
        """At the end of the last timed window, before testing: the device's end snapshot."""
        self.watch.stop()

    def tested(self, cfg: RunConfig, accelerator: Accelerator, timed_images: int, history: list[dict],
               resumed: bool) -> tuple[dict, dict]:
        """Once testing is done (every process): (run metrics, record fields) of cold start, energy and the device's
        state. Energy ends here: inference, timed next, is not the run's."""
        self.compile_s = compile_seconds() - self.compile_before if cfg.compile_mode else None
        energy = summed(gather_object([self.energy.reading()]))
        target = cfg.target_accuracy
        target_row = next((index for index, row in enumerate(history) if target is not None
                           and row["val_acc"] >= target), None)
        states = gather_object([{"rank": accelerator.process_index, **self.watch.states()}])
        metrics = {"compile_s": self.compile_s, **device_flags(states),
                   **energy_metrics(energy, self.energy.counter, timed_images, target_row, resumed)}
        return metrics, {"device_state": states}

    def inference(self, cfg: RunConfig, accelerator: Accelerator, training: Training) -> tuple[dict, dict]:
        """The trained model's inference on the main process (the others wait): (run metrics, record fields)."""
        measured = None
        if cfg.inference is not None and accelerator.is_main_process:
            model = accelerator.unwrap_model(training.model, keep_torch_compile=False)
            channels = len(training.eval_preprocess.mean)
            images = torch.randint(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, channels), dtype=torch.uint8,
                                   device=accelerator.device)
            example = training.eval_preprocess(images)[0]
            measured = measure_inference(model, example, cfg.precision, cfg.channels_last, cfg.compile_mode,
                                         cfg.inference)
        accelerator.wait_for_everyone()
        return inference_metrics(measured), {"inference": measured}

    def first_step_metrics(self, training: Training) -> dict:
        at = training.first_step_at
        return {"time_to_first_step_s": at - self.started if at is not None else None}
