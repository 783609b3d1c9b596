"""The trained model's inference timing (bench/measuring/inference.py) on this machine's CPU: real models, real clocks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.measuring.inference import THROUGHPUT_MIN_CALLS, InferenceOptions, call_latencies, inference_metrics, measure_inference
from data.augment import DevicePreprocess
from data.datasets import get_spec
from models import build_model

CPU = torch.device("cpu")


def example(dataset: str = "mnist", channels_last: bool = False) -> torch.Tensor:
    """One preprocessed image as a run's evaluation preprocessing makes it."""
    spec = get_spec(dataset)
    images = torch.randint(0, 256, (1, 64, 64, spec.channels), dtype=torch.uint8)
    return DevicePreprocess(spec.mean, spec.std, None, channels_last)(images)[0]


def test_batch_1_percentiles_and_large_batch_throughput_of_a_real_model():
    model = build_model("resnet18", 1, 10).eval()
    options = InferenceOptions(batch=8, min_seconds=0.2, min_calls=5)
    measured = measure_inference(model, example(), "no", False, None, options)
    eager = measured["eager"]
    latency, throughput = eager["latency_ms"], eager["throughput"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert eager["latency_calls"] >= options.min_calls
    assert throughput["status"] == "ok" and throughput["calls"] >= THROUGHPUT_MIN_CALLS
    assert throughput["seconds"] >= options.min_seconds
    assert throughput["images_per_s"] == pytest.approx(8 * throughput["calls"] / throughput["seconds"])
    assert measured["compiled"] is None  # an eager run is timed eager only
    metrics = inference_metrics(measured)
    assert metrics["infer_p50_ms"] == latency["p50"] and metrics["infer_batch"] == 8
    assert metrics["compiled_infer_p50_ms"] is None and metrics["compiled_infer_images_per_s"] is None


def test_calls_are_timed_until_both_the_minimum_duration_and_the_minimum_count_are_met():
    model = build_model("resnet18", 1, 10).eval()
    single = example().unsqueeze(0)
    options = InferenceOptions(min_seconds=0.3, min_calls=2)
    with torch.no_grad():
        seconds = call_latencies(lambda: model(single), CPU, options, warmup=1)
    assert sum(seconds) >= 0.3 and len(seconds) >= 2 and all(second > 0 for second in seconds)
    # And not one call more: without the last call, one of the two minimums was not met yet.
    assert sum(seconds[:-1]) < 0.3 or len(seconds) - 1 < 2


def test_a_batch_beyond_memory_is_a_result_and_latency_is_still_measured():
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("this kernel overcommits every allocation: a huge batch would wake the OOM killer, not fail")
    model = build_model("resnet18", 1, 10).eval()
    # 20 million 64x64 images: 328 GB of input, refused by the allocator at once.
    measured = measure_inference(model, example(channels_last=True), "no", True, None,
                                 InferenceOptions(batch=20_000_000, min_seconds=0.01, min_calls=3))
    throughput = measured["eager"]["throughput"]
    assert throughput["status"] == "oom" and throughput["batch"] == 20_000_000 and "allocate" in throughput["error"]
    assert measured["eager"]["latency_ms"]["p50"] > 0
    assert inference_metrics(measured)["infer_images_per_s"] is None
