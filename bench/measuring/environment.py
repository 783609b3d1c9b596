"""What a result was measured on: versions, device, world size, the link between processes, and the code (commit and
source digest)."""
from __future__ import annotations

import os
import platform
from importlib import metadata

import torch
from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env

from bench.measuring.device import cpu_has_native_bf16, device_name, math_mode
from bench.measuring.link import link_facts
from bench.measuring.machine import machine_state
from bench.results.provenance import git_commit, source_digest


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def use_cpu() -> bool:
    """Whether Accelerate must be told to run on the CPU: without CUDA, torchrun-style launches must ask for it, or each
    process runs alone."""
    return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")


def cpu_launch_error() -> str | None:
    """Why this process is the lone survivor of a multi-process `accelerate launch --cpu` (which needs MPI for more than
    one), or None: running on would record a one-process result nobody asked for."""
    env = os.environ
    launched_by_mpi = any(key in env for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    if parse_flag_from_env("ACCELERATE_USE_CPU") and "MASTER_ADDR" in env and "WORLD_SIZE" not in env \
            and not launched_by_mpi:
        return ("accelerate launch --cpu with several processes starts only one without MPI; for several CPU "
                "processes use: accelerate launch --multi_gpu --num_processes N bench/run.py ...")
    return None


def num_machines(num_processes: int) -> int:
    """Machines the run spans: processes over those on this machine (torchrun's LOCAL_WORLD_SIZE; one machine when
    launched without it). 8 GPUs on one machine and 4 on each of two are different runs: the interconnect differs."""
    return max(1, num_processes // int(os.environ.get("LOCAL_WORLD_SIZE", num_processes) or num_processes))


def environment(accelerator: Accelerator) -> dict:
    return {
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "accelerate": package_version("accelerate"),
        "ffcv": package_version("ffcv"),
        "numpy": package_version("numpy"),
        "numba": package_version("numba"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "visible_gpus": torch.cuda.device_count(),
        "device_type": accelerator.device.type,
        "device_name": device_name(accelerator.device),
        "num_processes": accelerator.num_processes,
        "num_machines": num_machines(accelerator.num_processes),
        "distributed_type": str(accelerator.distributed_type.value),
        "mixed_precision": accelerator.mixed_precision,
        "tf32": math_mode(accelerator.device, "no") == "tf32",
        "cpu_native_bf16": cpu_has_native_bf16(),
        "hostname": platform.node(),
        "git_commit": git_commit(),  # also in a tree copied without .git
        "source_digest": source_digest(),
        "machine": machine_state(accelerator.device),  # driver, CUDA, power limit; CPU governor and frequencies
        "link": link_facts(accelerator.device.type),  # backend, NCCL version and settings, GPU topology
    }
