"""How fast a run's trained model serves: batch-1 latency percentiles and large-batch throughput, eager and compiled,
each timed after warm-up until a minimum duration and count are met (docs/design.md).
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bench.measuring.device import AUTOCAST_DTYPES, uses_cuda_graphs
from bench.measuring.measure import is_oom, synchronize
from common.cli import positive_float, positive_int

# Untimed calls first: eager needs one (allocator, cuDNN's choice); a compiled model compiles on the first and
# records its CUDA graph on a later one.
WARMUP_CALLS = {"eager": 1, "compiled": 3}
# A throughput window is long in calls of a large batch: a few suffice (and --inference-min-seconds), where latency
# percentiles need many single calls (--inference-min-calls).
THROUGHPUT_MIN_CALLS = 3
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class InferenceOptions:
    """How a run's model is timed after testing (the runner's --inference-* options)."""

    batch: int = 256
    min_seconds: float = 0.5
    min_calls: int = 20


def add_inference_options(group: argparse._ArgumentGroup) -> None:
    """The runner's inference options, in its `precision and speed` help group."""
    group.add_argument("--no-inference", dest="inference", action="store_false",
                       help="skip timing the trained model's inference after each run (batch-1 latency, "
                       "large-batch throughput)")
    group.add_argument("--inference-batch", type=positive_int, default=None, metavar="N",
                       help="batch of the inference throughput measurement (default: the preset's, 256; smoke: 32); "
                       "out of memory is recorded as a result")
    group.add_argument("--inference-min-seconds", type=positive_float, default=InferenceOptions.min_seconds,
                       metavar="S", help="time each inference measurement at least S seconds (default %(default)s)")
    group.add_argument("--inference-min-calls", type=positive_int, default=InferenceOptions.min_calls, metavar="N",
                       help="and batch-1 latency over at least N calls, warm-up excluded (default %(default)s)")


def inference_options(args: argparse.Namespace, preset_batch: int) -> InferenceOptions | None:
    """The parsed options as InferenceOptions, or None with --no-inference."""
    if not args.inference:
        return None
    return InferenceOptions(batch=args.inference_batch or preset_batch, min_seconds=args.inference_min_seconds,
                            min_calls=args.inference_min_calls)


def call_latencies(call: Callable[[], None], device: torch.device, options: InferenceOptions,
                   warmup: int) -> list[float]:
    """Seconds of each call, each synchronised on its own, until both minimums are met (warm-up excluded)."""
    for _ in range(warmup):
        call()
    synchronize(device)
    seconds: list[float] = []
    while len(seconds) < options.min_calls or sum(seconds) < options.min_seconds:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            call()
            synchronize(device)
            seconds.append(time.perf_counter() - began)
    return seconds


def window_throughput(call: Callable[[], None], device: torch.device, batch: int, options: InferenceOptions,
                      warmup: int) -> dict:
    """Images/s of calls back to back in one window synchronised at both ends, until both minimums are met."""
    for _ in range(warmup):
        call()
    synchronize(device)
    calls, began = 0, time.perf_counter()
    # The host clock runs ahead of a GPU's queue, so the window, closed after a sync, is never shorter than asked.
    while calls < THROUGHPUT_MIN_CALLS or time.perf_counter() - began < options.min_seconds:
        call()
        calls += 1
    synchronize(device)
    seconds = time.perf_counter() - began
    return {"status": "ok", "batch": batch, "calls": calls, "seconds": seconds, "images_per_s": batch * calls / seconds}


def time_model(model: torch.nn.Module, example: torch.Tensor, precision: str, channels_last: bool,
               compile_mode: str | None, options: InferenceOptions) -> dict:
    """Batch-1 latency percentiles (ms) and large-batch throughput of `model` on copies of one preprocessed
    image `example` (C x H x W on the device), in the run's memory format."""
    device = example.device
    dtype = AUTOCAST_DTYPES.get(precision)
    graphs = uses_cuda_graphs(compile_mode, device)
    warmup = WARMUP_CALLS["compiled" if compile_mode else "eager"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def caller(inputs: torch.Tensor) -> Callable[[], None]:
        def call() -> None:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                model(inputs)
        return call

    single = example.unsqueeze(0).contiguous(memory_format=memory_format)
    latencies = np.asarray(call_latencies(caller(single), device, options, warmup)) * 1e3
    result = {"latency_ms": {f"p{q}": float(np.percentile(latencies, q)) for q in PERCENTILES},
              "latency_calls": len(latencies)}
    try:
        batch = single.expand(options.batch, *single.shape[1:]).contiguous(memory_format=memory_format)
        result["throughput"] = window_throughput(caller(batch), device, options.batch, options, warmup)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(error):
            raise
        result["throughput"] = {"status": "oom", "batch": options.batch, "error": str(error).splitlines()[0]}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def measure_inference(model: torch.nn.Module, example: torch.Tensor, precision: str, channels_last: bool,
                      compile_mode: str | None, options: InferenceOptions) -> dict:
    """{"eager": ..., "compiled": ... or None} for a run's trained `model` (bare, unwrapped: no DDP, not compiled);
    the compiled measurement only when the run compiled, with its mode."""
    model.eval()
    out = {"eager": time_model(model, example, precision, channels_last, None, options), "compiled": None,
           "options": {"batch": options.batch, "min_seconds": options.min_seconds, "min_calls": options.min_calls,
                       "warmup_calls": WARMUP_CALLS, "throughput_min_calls": THROUGHPUT_MIN_CALLS}}
    if compile_mode:
        compiled = torch.compile(model, mode=compile_mode, dynamic=False)
        out["compiled"] = time_model(compiled, example, precision, channels_last, compile_mode, options)
    return out


def inference_metrics(measured: dict | None) -> dict:
    """The run metrics from `measure_inference`'s result; all None when not measured."""
    fields = {}
    for prefix, key in (("infer", "eager"), ("compiled_infer", "compiled")):
        part = (measured or {}).get(key) or {}
        latency, throughput = part.get("latency_ms") or {}, part.get("throughput") or {}
        fields |= {f"{prefix}_{name}_ms": latency.get(name) for name in ("p50", "p95", "p99")}
        fields[f"{prefix}_images_per_s"] = throughput.get("images_per_s")
    fields["infer_batch"] = (measured or {}).get("options", {}).get("batch")
    return fields
