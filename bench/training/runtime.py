"""The device-facing set-up that the runner, the speed sweep and the overhead benchmark share, once each:
backend flags, the precision guard, a model with its optimizer, the cleanup after a run, and their console."""
from __future__ import annotations

import gc

import torch
from accelerate import Accelerator

from models import build_model

FUSED_SGD_DEVICES = ("cuda", "cpu")  # where torch has a fused SGD kernel


def configure_backends(device: torch.device) -> None:
    """On CUDA: cuDNN autotuning (the input shape is fixed for a whole run, so the search pays for itself),
    and TF32 for both convolutions and matmuls, so that precision "no" means one thing (TF32 tensor cores)
    and MFU divides by that peak (device.math_mode); the record's env says so."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")


def build_model_and_optimizer(name: str, in_channels: int, num_classes: int, device: torch.device, *,
                              channels_last: bool, lr: float = 1e-3, momentum: float = 0.9, nesterov: bool = False,
                              weight_decay: float = 0.0, train: bool = True, compile_mode: str | None = None,
                              accelerator: Accelerator | None = None,
                              ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
    """A fresh model on `device` (and SGD when training), prepared by `accelerator` when given, optionally compiled.
    SGD is fused: one kernel for the update (VGG16 on two CPU cores: 0.15 s a step, not 0.9), no host sync for fp16."""
    model = build_model(name, in_channels, num_classes).to(device)
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
