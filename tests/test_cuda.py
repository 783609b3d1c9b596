"""The CUDA-only paths (marked `cuda`: skipped without a GPU, run by scripts/gpu-check.sh with `pytest -m cuda`):
fp16 with the fused optimizer and no host sync per step, the loader's copies to the GPU, CUDA memory
statistics, the data stall on the device timeline, the link's facts and SyncBatchNorm (#24), and the harness under torch.compile's CUDA graphs (in a
process of its own: marked `spawns`, run by the check in a pytest process that holds no CUDA context)."""
from __future__ import annotations

import time

import pytest
import torch

from bench.measuring.device import datasheet_peak, measured_matmul_tflops
from bench.measuring.link import link_facts
from bench.measuring.measure import WindowTimer, peak_memory_bytes, reset_peak_memory
from bench.speed import bare_train_step
from bench.suite.config import Communication
from bench.training.runtime import build_model_and_optimizer, unsupported
from data.encode import prepare_dataset
from data.loaders import make_loader
from helpers import TINY, records_in, run_bench

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
DATASHEET_TOLERANCE = 1.05  # a measured peak may exceed the datasheet's by this factor


def test_fp16_step_with_fused_sgd_makes_no_host_sync():
    model, optimizer = build_model_and_optimizer("resnet18", 3, 10, CUDA, channels_last=True)
    step = bare_train_step(model, optimizer, "fp16", CUDA)
    inputs = torch.randn(32, 3, 64, 64, device=CUDA).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (32,), device=CUDA)
    for _ in range(3):  # cuDNN autotuning and the scaler's first steps may sync
        step(inputs, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(inputs, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert optimizer.defaults["fused"] and all(torch.isfinite(p).all() for p in model.parameters())


def test_loader_copies_batches_to_the_gpu_unchanged(tmp_path):
    encoded = prepare_dataset("cifar10", cache_dir=tmp_path, synthetic=True, synthetic_train=120, synthetic_test=30)
    on_gpu = make_loader(encoded.paths["test"], batch_size=16, train=False, device=CUDA, num_workers=2)
    on_cpu = make_loader(encoded.paths["test"], batch_size=16, train=False, device=torch.device("cpu"), num_workers=2)
    for (gpu_images, gpu_labels, gpu_indices), (cpu_images, cpu_labels, cpu_indices) in zip(on_gpu, on_cpu):
        assert gpu_images.device.type == "cuda" and gpu_images.dtype == torch.uint8
        assert torch.equal(gpu_images.cpu(), cpu_images) and torch.equal(gpu_labels.cpu(), cpu_labels)
        assert torch.equal(gpu_indices.cpu(), cpu_indices)


def test_cuda_peak_memory_resets():
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device=CUDA)
    high = peak_memory_bytes(CUDA)[0]
    del big
    reset_peak_memory(CUDA)
    assert peak_memory_bytes(CUDA)[0] <= high - 200 * 2**20


def test_a_runs_first_reset_does_not_count_the_previous_runs_cached_blocks():
    previous_run = torch.empty(512 * 2**20, dtype=torch.uint8, device=CUDA)
    del previous_run  # its memory stays cached by the allocator, reserved but free
    assert torch.cuda.memory_reserved(CUDA) >= 512 * 2**20
    reset_peak_memory(CUDA)
    assert peak_memory_bytes(CUDA)[1] >= 512 * 2**20  # a plain reset still counts the cache
    reset_peak_memory(CUDA, drop_cached=True)
    assert peak_memory_bytes(CUDA)[1] < 512 * 2**20


def test_an_unlisted_gpus_peak_is_a_large_matmul_between_events_and_an_upper_bound():
    measured = measured_matmul_tflops(CUDA, "bf16")
    listed = datasheet_peak(torch.cuda.get_device_name(CUDA), "bf16")
    print(f"bf16 matmul {measured:,.0f} TFLOP/s, datasheet {listed}")  # for the check's log
    assert measured > 10  # a launch-bound measurement would be far lower on any tensor-core GPU
    if listed:
        # Boost clocks and a datasheet's rounding can put a card slightly above its listed peak; a wrong datasheet
        # row (another model's, another precision's) is far beyond this.
        assert measured <= DATASHEET_TOLERANCE * listed[0]


def test_data_stall_is_the_gpu_waiting_not_the_host():
    # A slow batch with an idle GPU: the GPU waits, a stall.
    timer = WindowTimer(CUDA)
    timer.start()
    with timer.waiting_for_data():
        time.sleep(0.05)
    timer.stop()
    assert timer.data_wait_s >= 0.04
    # A busy GPU (back-pressure): the host waits as long, but the GPU never does.
    a = torch.randn(4096, 4096, device=CUDA)
    timer = WindowTimer(CUDA)
    timer.start()
    for _ in range(50):
        a = a @ a / 64  # ~0.3 s of queued work on an H100
    with timer.waiting_for_data():
        time.sleep(0.05)
    timer.stop()
    assert timer.data_wait_s < 0.01


@pytest.mark.spawns
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_harness_under_cuda_graphs_compiles_two_graphs_and_learns(tmp_path, precision):
    # 8 epochs of 3 steps: fp16's GradScaler skips its first steps (the loss scale starts too high) and the
    # smoke recipe warms up, so the loss is compared over the whole run, not step by step.
    done = run_bench(TINY + ["--models", "resnet18", "--datasets", "cifar10", "--epochs", "8", "--precision",
                             precision, "--channels-last", "--compile", "reduce-overhead"], tmp_path, tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records_in(tmp_path)
    metrics = record.metrics
    assert record.status == "finished" and metrics["compiled_graphs"] == 2
    assert metrics["peak_mem_allocated_bytes"] > 0 and 0 < metrics["mfu"] <= 1
    losses = [row["train_loss"] for row in record.history]
    assert min(losses[-3:]) < losses[0], losses


def test_the_link_is_read_and_the_levers_a_cpu_refuses_build_on_a_gpu():
    """#24 on one GPU: NCCL's version and the topology (or why not) for the record's env.link; SyncBatchNorm and
    PowerSGD are not refused here, and a SyncBatchNorm model builds and trains a step (one process: plain batch
    norm's statistics; several GPUs are needed to see them synchronised)."""
    link = link_facts("cuda")
    assert len(link["nccl_version"].split(".")) == 3  # torch.cuda.nccl.version(), e.g. 2.27.5
    assert (link["gpu_topology"] is None) != (link["gpu_topology_note"] is None)  # nvidia-smi topo -m, or why not
    print(f"NCCL {link['nccl_version']}; topology: {link['gpu_topology'] or link['gpu_topology_note']}")
    for lever in (Communication(sync_bn=True), Communication(comm_hook="power_sgd", powersgd_rank=4),
                  Communication(comm_hook="bf16")):
        assert unsupported(lever, CUDA) is None, lever
    model, optimizer = build_model_and_optimizer("resnet18_improved", 3, 10, CUDA, channels_last=True, sync_bn=True)
    norms = [type(module) for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and set(norms) == {torch.nn.SyncBatchNorm}
    inputs = torch.randn(8, 3, 64, 64, device=CUDA).to(memory_format=torch.channels_last)
    model(inputs).sum().backward()
    optimizer.step()
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
