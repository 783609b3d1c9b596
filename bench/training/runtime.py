"""The device-facing set-up that the runner, the speed sweep and the overhead benchmark share, once each:
backend flags, the precision guard, how the processes communicate (DDP's settings, SyncBatchNorm), a model with its
optimizer, the cleanup after a run, and their console."""
from __future__ import annotations

import gc
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs

from bench.suite.config import Communication
from data.datasets import DatasetSpec
from data.encode import IMAGE_SIZE
from models import build_model

# PowerSGD compresses from this step on (plain all-reduce before it): torch's earliest with error feedback and warm
# start (its default, 1,000, would leave a short benchmark run uncompressed).
POWERSGD_START_STEP = 2

FUSED_SGD_DEVICES = ("cuda", "cpu")  # where torch has a fused SGD kernel


def configure_backends(device: torch.device) -> None:
    """On CUDA: cuDNN autotuning (the input shape is fixed for a whole run, so the search pays for itself),
    and TF32 for both convolutions and matmuls, so that precision "no" means one thing (TF32 tensor cores)
    and MFU divides by that peak (device.math_mode); the record's env says so."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")


def ddp_kwargs(communication: Communication) -> DistributedDataParallelKwargs:
    """Accelerate's handler for `communication`'s DDP settings (applied when the Accelerator prepares a model)."""
    powersgd = {"matrix_approximation_rank": communication.powersgd_rank,
                "start_powerSGD_iter": POWERSGD_START_STEP} if communication.powersgd_rank else {}
    buckets = {"bucket_cap_mb": communication.bucket_cap_mb} if communication.bucket_cap_mb else {}
    return DistributedDataParallelKwargs(
        comm_hook=DDPCommunicationHookType(communication.comm_hook), comm_state_option=powersgd,
        gradient_as_bucket_view=communication.gradient_as_bucket_view, static_graph=communication.static_graph,
        **buckets)


def unsupported(communication: Communication, device: torch.device) -> str | None:
    """Why `communication` cannot run on `device` (the run is then recorded as `unsupported`), or None."""
    if communication.sync_bn and device.type != "cuda":
        return (f"--sync-bn on {device.type}: torch's SyncBatchNorm synchronises CUDA tensors only (it refuses "
                f"{device.type} ones); expected a CUDA device")
    if communication.powersgd_rank and device.type != "cuda":
        return (f"--comm-hook {communication.comm_hook} on {device.type}: PowerSGD's hook runs on NCCL only (on "
                "gloo its overlapping all-reduces mismatch once it compresses, as in pytorch/pytorch#58467; torch "
                "tests it on NCCL alone); expected a CUDA device")
    if communication.comm_hook == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "--comm-hook bf16: this GPU (or its NCCL, before 2.10) has no bf16; expected fp16 here"
    return None


def build_model_and_optimizer(name: str, in_channels: int, num_classes: int, device: torch.device, *,
                              channels_last: bool, lr: float = 1e-3, momentum: float = 0.9, nesterov: bool = False,
                              weight_decay: float = 0.0, train: bool = True, compile_mode: str | None = None,
                              accelerator: Accelerator | None = None, sync_bn: bool = False,
                              ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
    """A fresh model on `device` (and SGD when training), prepared by `accelerator` when given, optionally compiled;
    with `sync_bn` its batch norms become SyncBatchNorm before DDP wraps it. SGD is fused: one kernel for the update
    (VGG16 on two CPU cores: 0.15 s a step, not 0.9), no host sync for fp16."""
    model = build_model(name, in_channels, num_classes).to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = None
    if train:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                                    weight_decay=weight_decay, fused=device.type in FUSED_SGD_DEVICES or None)
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer) if train else (accelerator.prepare(model), None)
    if compile_mode:
        # Static shapes: training drops its last partial batch and evaluation pads its own,
        # so one training graph and one evaluation graph serve the whole run.
        model = torch.compile(model, mode=compile_mode, dynamic=False)
    return model, optimizer


def synthetic_batches(batch_size: int, spec: DatasetSpec, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same uint8 batch of the dataset's shape forever, already on the device: no input pipeline at all."""
    images = torch.randint(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, spec.channels), dtype=torch.uint8, device=device)
    labels = torch.randint(0, spec.num_classes, (batch_size,), device=device)
    while True:
        yield images, labels


def print_main(accelerator: Accelerator, *args, **kwargs) -> None:
    """Print from the global main process only. Accelerate's `print` prints on every machine's local main, which
    doubles each line in a two-node job's log."""
    if accelerator.is_main_process:
        print(*args, flush=True, **kwargs)


def release(accelerator: Accelerator, compiled: bool) -> None:
    """Free what a finished run or sweep point held, so the next one starts clean."""
    accelerator.free_memory()
    if compiled:
        torch.compiler.reset()  # no compiled frames, recompile counts or CUDA-graph pools carried over
    gc.collect()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
