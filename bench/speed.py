"""Throughput and memory sweeps without full training, in the manner of timm's benchmark.py.

Per model x precision x memory format x compile mode x batch: images/s (median of timed windows after warm-up), step
time, peak memory and MFU, on device-resident batches or the real FFCV loader; out of memory and errors are results.
"""
from __future__ import annotations

import itertools
import resource
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from bench.measuring.device import AUTOCAST_DTYPES, peak_tflops, precision_error, uses_cuda_graphs
from bench.measuring.environment import environment, use_cpu
from bench.measuring.maxbatch import describe, memory_budget, search
from bench.measuring.measure import is_oom, peak_memory_bytes, reset_peak_memory, synchronize
from bench.reporting.render import markdown_table
from bench.reporting.tables import sweep_table
from bench.results.records import write_sweep
from bench.results.schema import SweepRecord
from bench.suite.options import results_folder
from bench.suite.recipes import COMPILE_MODES, PRECISIONS
from bench.training.profiling import StepProfiler
from bench.training.runtime import build_model_and_optimizer, configure_backends, print_main, release, synthetic_batches
from common.cli import OneLineParser, add_plugin_option, load_plugins, non_negative_float, positive_int
from common.files import DiskFull
from data.augment import DevicePreprocess
from data.datasets import dataset_names, get_spec
from data.loaders import default_num_workers
from models import model_names
from models.facts import model_facts


@dataclass(frozen=True)
class SpeedPoint:
    model: str
    dataset: str
    mode: str  # "train" or "infer"
    precision: str
    channels_last: bool
    compile: str  # "off" or a torch.compile mode
    batch_size: int  # per process
    data: str  # "synthetic" (device-resident tensors) or "ffcv"

    @property
    def key(self) -> str:
        return (f"{self.model}_{self.dataset}_{self.mode}_{self.precision}_{'cl' if self.channels_last else 'cf'}_"
                f"{'eager' if self.compile == 'off' else 'compile-' + self.compile}_b{self.batch_size}_{self.data}")


def ffcv_batches(dataset: str, batch_size: int, device: torch.device, distributed: bool, num_workers: int,
                 data_dir: Path | None, cache_dir: Path | None, synthetic: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches from the real FFCV loader, epoch after epoch, in the order a run would read them."""
    from data.encode import prepare_dataset
    from data.loaders import make_loader, training_order

    encoded = prepare_dataset(dataset, data_dir=data_dir, cache_dir=cache_dir, synthetic=synthetic)
    path = encoded.paths["train"]
    order, _ = training_order(path.stat().st_size, torch.distributed.get_world_size() if distributed else 1)
    loader = make_loader(path, batch_size=batch_size, train=True, device=device, distributed=distributed,
                         num_workers=num_workers, order=order)
    while True:
        epoch = iter(loader)
        try:
            for images, labels, _ in epoch:
                yield images, labels
        finally:  # the sweep abandons its last epoch: free ffcv's thread and its pinned and device buffers now
            epoch.close()


def bare_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str,
                    device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The plainest training step PyTorch allows: autocast forward, (fp16: scaled) backward, optimizer step; `optimizer`
    is the raw one, since GradScaler skips its per-step host sync only for an optimizer with fused loss scaling."""
    criterion = torch.nn.CrossEntropyLoss()
    dtype = AUTOCAST_DTYPES.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = criterion(model(inputs).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_point(point: SpeedPoint, accelerator: Accelerator, batches: Iterator, warmup: int, steps: int,
                  windows: int, profile_dir: Path | None) -> dict:
    """Time `windows` windows of `steps` steps after `warmup` steps; return the point's record fields."""
    device = accelerator.device
    spec = get_spec(point.dataset)
    training = point.mode == "train"
    model, optimizer = build_model_and_optimizer(point.model, spec.channels, spec.num_classes, device,
                                                 channels_last=point.channels_last, train=training,
                                                 compile_mode=None if point.compile == "off" else point.compile,
                                                 accelerator=accelerator)
    model.train(training)
    preprocess = DevicePreprocess(spec.mean, spec.std, None, point.channels_last)
    dtype = AUTOCAST_DTYPES.get(point.precision)
    train_step = bare_train_step(model, optimizer.optimizer, point.precision, device) if training else None
    cuda_graphs = uses_cuda_graphs(None if point.compile == "off" else point.compile, device)

    def step() -> None:
        images, labels = next(batches)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        inputs = preprocess(images)
        if train_step is not None:
            train_step(inputs, labels)
            return
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            model(inputs)

    for _ in range(warmup):
        step()
    reset_peak_memory(device)  # the timed steps' peak, without compilation's or cuDNN autotuning's workspaces
    window_times = []
    for window in range(windows):
        profiler = StepProfiler(profile_dir, device, 0) if profile_dir and window == 0 and accelerator.is_main_process else None
        synchronize(device)
        start = time.perf_counter()
        for done in range(1, steps + 1):
            step()
            if profiler:
                profiler.step(done)
        synchronize(device)
        window_times.append((time.perf_counter() - start) / steps)
        if profiler:
            profiler.close()
    step_time = statistics.median(window_times)
    # Every process runs the same steps in lock-step: the global rate is the per-process rate x world.
    images_per_s = point.batch_size * accelerator.num_processes / step_time
    allocated, reserved = peak_memory_bytes(device)
    facts = model_facts(point.model, spec.channels, num_classes=spec.num_classes)
    gflops = facts.train_gflops if point.mode == "train" else facts.forward_gflops
    peak, _ = peak_tflops(device, point.precision)
    achieved = gflops * images_per_s / 1e3
    return {
        "status": "ok", "images_per_s": images_per_s, "step_time_ms": step_time * 1e3,
        "window_step_times_ms": [t * 1e3 for t in window_times],
        "peak_mem_allocated_bytes": allocated, "peak_mem_reserved_bytes": reserved,
        "achieved_tflops": achieved, "mfu": achieved / (peak * accelerator.num_processes) if peak else None,
        "params": facts.params, "gflops_per_image": gflops,
    }


def limit_memory(gigabytes: float, device: torch.device) -> None:
    """Pretend the device has only this much memory: a per-process cap on CUDA, an address-space cap on
    CPU (above what the process already maps). Lets a sweep preview a smaller card, and tests force OOM."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gigabytes * 2**30 / total), device)
        return
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + int(gigabytes * 2**30), resource.RLIM_INFINITY))


def max_batch_point(base: SpeedPoint, accelerator: Accelerator, args) -> tuple[SpeedPoint, dict]:
    """Search the largest batch that trains for `base`'s setting, say so in one line, and return
    the point at that batch (batch 1 when none fits: it is then recorded as out of memory) with the search's record
    fields."""
    device, spec = accelerator.device, get_spec(base.dataset)

    def probe(batch: int) -> int | None:
        point = replace(base, batch_size=batch)
        batches = synthetic_batches(batch, spec, device)
        try:
            peak = measure_point(point, accelerator, batches, 1, 1, 1, None)["peak_mem_allocated_bytes"]
        except Exception as error:  # noqa: BLE001 -- out of memory is the answer; anything else is not
            if not is_oom(error):
                raise
            peak = None
        finally:
            batches.close()
            release(accelerator, compiled=base.compile != "off")
        peaks = gather_object([peak])  # every process must fit
        return None if None in peaks else max(peaks)

    found = search(probe, args.batch_cap, memory_budget(device, args.memory_limit_gb))
    print_main(accelerator, f"{base.model} {base.precision} {'channels_last' if base.channels_last else 'contiguous'} "
                      f"compile {base.compile}: {describe(found, args.batch_cap)}")
    return replace(base, batch_size=found.batch or 1), {"search": "max-batch",
                                                         "max_batch": found.to_json(args.batch_cap)}


def on_off(text: str) -> list[bool]:
    return {"on": [True], "off": [False], "both": [False, True]}[text]


def build_parser() -> OneLineParser:
    models, datasets = model_names(), dataset_names()
    parser = OneLineParser(prog="bench/speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=models, default=list(models), metavar="MODEL",
                        help=f"valid: {', '.join(models)}")
    parser.add_argument("--dataset", choices=datasets, default="cifar10",
                        help=f"input shape and classes (and data, with --data ffcv); valid: {', '.join(datasets)}")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["no", "bf16"])
    parser.add_argument("--channels-last", choices=("on", "off", "both"), default="both")
    parser.add_argument("--compile", nargs="+", choices=("off", *COMPILE_MODES), default=["off"], metavar="MODE",
                        help="off (eager) and/or torch.compile modes to sweep: default, reduce-overhead (CUDA "
                        "graphs), max-autotune (default: off)")
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[64, 256], help="per process")
    parser.add_argument("--find-max-batch", action="store_true",
                        help="instead of --batch-sizes and --modes: search the largest batch per process that trains "
                        "without running out of memory (doubling, then bisection), per model, precision, memory "
                        "format and compile mode, and time it; on a CPU stop before the host's memory would run out")
    parser.add_argument("--batch-cap", type=positive_int, default=4096, metavar="N",
                        help="with --find-max-batch: the largest batch to try (default %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    parser.add_argument("--data", choices=("synthetic", "ffcv"), default="synthetic")
    parser.add_argument("--synthetic-source", action="store_true",
                        help="with --data ffcv: encode the learnable synthetic dataset instead of the real one")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--warmup", type=positive_int, default=5, help="untimed steps first (compile happens here)")
    parser.add_argument("--steps", type=positive_int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=positive_int, default=3, help="timed windows; the median is reported")
    parser.add_argument("--num-workers", type=positive_int, default=None,
                        help="FFCV loader threads per process (default: CPU cores / processes on this machine)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="cap the memory the sweep may use (per process), to preview a smaller device")
    parser.add_argument("--results-dir", type=results_folder, default=Path("results"))
    parser.add_argument("--profile", action="store_true", help="torch.profiler trace of the first window of each point")
    parser.add_argument("--time-budget-s", type=non_negative_float, default=None, metavar="S",
                        help="start no new point once S seconds have passed since the sweep began (the point in "
                        "progress finishes); one line names the points skipped. Points run model by model, then "
                        "mode, precision, channels_last, compile mode and batch size, each in the order given")
    add_plugin_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    load_plugins(argv, "bench/speed.py")
    args = build_parser().parse_args(argv)
    accelerator = Accelerator(mixed_precision="no", cpu=use_cpu())  # each point autocasts itself
    device = accelerator.device
    for precision in args.precisions:
        if error := precision_error(precision, device):
            print(f"bench/speed.py: error: --precisions {precision}: {error}", file=sys.stderr)
            return 2
    configure_backends(device)
    env = environment(accelerator)
    if args.memory_limit_gb and not (args.find_max_batch and device.type == "cpu"):  # there: the search's budget
        limit_memory(args.memory_limit_gb, device)
    num_workers = args.num_workers or default_num_workers()
    if args.find_max_batch:  # one point per setting, at the batch the search finds
        points = [max_batch_point(SpeedPoint(model, args.dataset, "train", precision, channels_last, compiled, 1,
                                             "synthetic"), accelerator, args)
                  for model, precision, channels_last, compiled in itertools.product(
                      args.models, args.precisions, on_off(args.channels_last), args.compile)]
    else:
        points = [
            (SpeedPoint(model, args.dataset, mode, precision, channels_last, compiled, batch, args.data), {})
            for model, mode, precision, channels_last, compiled, batch in itertools.product(
                args.models, args.modes, args.precisions, on_off(args.channels_last), args.compile, args.batch_sizes)
        ]
    rows = []
    for number, (point, searched) in enumerate(points):
        # Every process must agree to stop, or the others would wait forever at the next point's collectives.
        if args.time_budget_s is not None and broadcast_object_list(
                [time.monotonic() - started >= args.time_budget_s])[0]:
            print_main(accelerator, f"bench/speed.py: time budget of {args.time_budget_s:g} s spent after {number} of "
                              f"{len(points)} point(s); skipped: {', '.join(p.key for p, _ in points[number:])}")
            break
        if point.data == "synthetic":
            batches = synthetic_batches(point.batch_size, get_spec(point.dataset), device)
        else:
            batches = ffcv_batches(point.dataset, point.batch_size, device, accelerator.num_processes > 1,
                                   num_workers, args.data_dir, args.cache_dir, args.synthetic_source)
        profile_dir = args.results_dir / "profiles" / f"speed-{point.key}" if args.profile else None
        try:
            measured = measure_point(point, accelerator, batches, args.warmup, args.steps, args.windows, profile_dir)
        except Exception as error:  # noqa: BLE001 -- a point that fails is a result; the sweep goes on
            # Out of memory is `oom`; anything else (an inductor or Triton failure on a compiled point, say) is
            # `error` with its first line, and the traceback goes to stderr for the log.
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if is_oom(error):
                measured = {"status": "oom", "error": message}
            else:
                traceback.print_exc()
                measured = {"status": "error", "error": f"{type(error).__name__}: {message}"}
        finally:
            batches.close()
            release(accelerator, compiled=point.compile != "off")
        record = SweepRecord(**asdict(point), **searched, **measured, in_channels=get_spec(point.dataset).channels,
                             world_size=accelerator.num_processes, env=env,
                             measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), warmup=args.warmup, steps=args.steps,
                             windows=args.windows)
        if accelerator.is_main_process:
            try:
                write_sweep(args.results_dir, f"{'maxbatch_' if searched else ''}{point.key}", record)
            except DiskFull as error:  # the points already written are whole; the sweep cannot go on
                print(f"bench/speed.py: error: {error}", file=sys.stderr)
                return 1
        rows.append(record)
        if record.status == "ok":
            print_main(accelerator, f"{point.key}: {record.images_per_s:,.0f} img/s, {record.step_time_ms:.1f} ms/step, "
                              f"peak {record.peak_mem_allocated_bytes / 2**20:,.0f} MiB")
        else:
            print_main(accelerator, f"{point.key}: {record.status} ({record.error})")
    accelerator.end_training()
    if accelerator.is_main_process and rows:
        print(markdown_table(sweep_table(rows).drop(columns=["device", "world_size", "dataset", "data"])))
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
