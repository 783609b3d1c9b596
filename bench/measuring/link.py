"""The link between a run's processes: what it is (the backend, NCCL's version and its settings, the GPUs' topology
from `nvidia-smi topo -m`) and what an all-reduce gets through it, in nccl-tests' terms (its doc/PERFORMANCE.md):
algorithm bandwidth is bytes / time; bus bandwidth, for an all-reduce, algbw x 2(n-1)/n, what each process's link
carried, comparable with the hardware's peak whatever the number of processes."""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from functools import lru_cache

import torch
import torch.distributed as dist

from bench.measuring.measure import all_reduce_max_, synchronize

LINK_SETTINGS = ("NCCL_", "TORCH_NCCL_", "GLOO_")  # environment variables that choose or tune the link


def gpu_topology() -> tuple[str | None, str | None]:
    """(`nvidia-smi topo -m`'s matrix, None), or (None, why it could not be read)."""
    try:
        done = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"nvidia-smi topo -m: {error}"
    if done.returncode:
        return None, f"nvidia-smi topo -m: exit {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    return done.stdout.strip(), None


@lru_cache(maxsize=None)
def link_facts(device_type: str) -> dict:
    """What the processes talk over (the record's env.link): read once per process."""
    cuda = device_type == "cuda"
    topology, note = gpu_topology() if cuda else (None, "no GPUs")
    return {"backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
            "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "settings": {name: value for name, value in sorted(os.environ.items()) if name.startswith(LINK_SETTINGS)},
            "gpu_topology": topology, "gpu_topology_note": note}


def link_label(link: dict | None) -> str:
    """A link in a few words (`nccl 2.21.5`, `gloo`, with any NCCL_* settings): points with different labels are
    measured on different links and never share a line."""
    if not link or not link.get("backend"):
        return "one process"
    words = [link["backend"], link.get("nccl_version") or ""]
    words += [f"{name}={value}" for name, value in (link.get("settings") or {}).items() if name.startswith("NCCL_")]
    return " ".join(word for word in words if word)


def bus_bandwidth(algbw: float, world: int) -> float:
    """nccl-tests' bus bandwidth of an all-reduce among `world` processes."""
    return algbw * 2 * (world - 1) / world


def time_all_reduce(nbytes: int, device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of `repeats` all-reduces of `nbytes` of fp32 (gradients' dtype) among all processes, each
    started together and timed to its end on the slowest process, after one untimed all-reduce."""
    tensor = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=device)
    dist.all_reduce(tensor)  # connections and buffers set up outside the timing
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        synchronize(device)
        started = time.perf_counter()
        dist.all_reduce(tensor)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return all_reduce_max_(torch.tensor(seconds, dtype=torch.float64, device=device)).tolist()


def bandwidth(nbytes: int, seconds: list[float], world: int) -> dict:
    """An all-reduce's timings as the record keeps them, with nccl-tests' bandwidths (GB/s, 10^9 bytes) over their
    median."""
    algbw = nbytes / statistics.median(seconds) / 1e9
    return {"bytes": nbytes, "seconds": seconds, "algbw_gbs": algbw, "busbw_gbs": bus_bandwidth(algbw, world)}
