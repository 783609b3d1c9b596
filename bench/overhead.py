"""What the harness's loop costs over a bare PyTorch loop: the same model, batch and device-resident data through both.

`python -m bench.overhead --model resnet18_improved --batch-size 1024 --precision bf16 --channels-last` alternates the
harness's `train_steps` and a bare loop and prints both throughputs and their ratio (target >= 0.97).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from typing import Sequence

import torch
from accelerate import Accelerator

from bench.measuring.device import precision_error
from bench.measuring.environment import use_cpu
from bench.measuring.measure import WindowTimer, synchronize
from bench.speed import bare_train_step
from bench.suite.config import RunConfig
from bench.suite.recipes import PRECISIONS, RECIPES
from bench.training.loop import Training, make_schedule, train_steps
from bench.training.probes import RunProbes
from bench.training.runtime import build_model_and_optimizer, configure_backends, print_main, synthetic_batches
from common.cli import OneLineParser, add_plugin_option, load_plugins, positive_int
from data.augment import DevicePreprocess
from data.datasets import dataset_names, get_spec
from models import model_names


class RepeatedBatch:
    """A loader stand-in: the same device-resident batch `steps` times (with the loader's index field)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
        self.batch = (images, labels, torch.arange(labels.shape[0], device=labels.device))
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))


def bare_loop(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
              steps: int, precision: str, device: torch.device) -> float:
    """Images/s of the plainest training loop PyTorch allows (after one untimed step)."""
    step = bare_train_step(model, optimizer, precision, device)
    step(inputs, labels)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(inputs, labels)
    synchronize(device)
    return steps * labels.shape[0] / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    load_plugins(argv, "bench/overhead.py")
    parser = OneLineParser(prog="bench/overhead.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=model_names(), default="resnet18_improved")
    parser.add_argument("--dataset", choices=dataset_names(), default="cifar10")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=positive_int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=positive_int, default=5, help="alternations of harness and bare loop")
    add_plugin_option(parser)
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision=args.precision, cpu=use_cpu())
    device = accelerator.device
    if error := precision_error(args.precision, device):
        parser.error(f"--precision {args.precision}: {error}")
    configure_backends(device)
    spec = get_spec(args.dataset)
    torch.manual_seed(0)
    images, labels = next(synthetic_batches(args.batch_size, spec, device))
    preprocess = DevicePreprocess(spec.mean, spec.std, None, args.channels_last)
    inputs = preprocess(images)

    # The same model builder and fused SGD for both loops: only the loop around them differs.
    bare_model, bare_optimizer = build_model_and_optimizer(args.model, spec.channels, spec.num_classes, device,
                                                           channels_last=args.channels_last)
    harness_model, harness_optimizer = build_model_and_optimizer(args.model, spec.channels, spec.num_classes, device,
                                                                 channels_last=args.channels_last,
                                                                 accelerator=accelerator)
    recipe = replace(RECIPES["paper-improved"], lr=1e-3)
    cfg = RunConfig(model=args.model, dataset=args.dataset, seed=0, preset="overhead", recipe=recipe, epochs=1,
                    batch_size=args.batch_size, precision=args.precision, channels_last=args.channels_last,
                    compile_mode=None, synthetic=True, synthetic_train=0, synthetic_test=0, target_accuracy=None,
                    world_size=accelerator.num_processes)
    scheduler, per_step, _ = make_schedule(harness_optimizer, cfg, args.steps + 1)
    probes = RunProbes(accelerator, time.time())  # the run's probes, as the runner's loop has them
    harness_rates, bare_rates = [], []
    with probes.track():
        harness = Training(
            model=harness_model, optimizer=harness_optimizer, scheduler=scheduler, per_step_schedule=per_step,
            criterion=torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
            loaders={"train": RepeatedBatch(images, labels, args.steps + 1)}, counts={}, train_preprocess=preprocess,
            eval_preprocess=preprocess, generator=torch.Generator(device=device), probes=probes,
        )
        for round_number in range(args.rounds):
            timer = WindowTimer(device, energy=probes.energy)
            train_steps(harness, accelerator, iter(harness.loaders["train"]), timer, start_timing_at=1, step=0)
            harness_rates.append(timer.images_per_s)
            bare_rates.append(bare_loop(bare_model, inputs, labels, bare_optimizer, args.steps, args.precision,
                                        device))
            print_main(accelerator, f"round {round_number + 1}: harness {harness_rates[-1]:,.1f} img/s, "
                                    f"bare {bare_rates[-1]:,.1f} img/s")
    harness_rate, bare_rate = statistics.median(harness_rates), statistics.median(bare_rates)
    print_main(accelerator, f"{args.model} {args.dataset} batch {args.batch_size} {args.precision} "
                      f"channels_last={args.channels_last} on {device}: harness {harness_rate:,.1f} img/s, "
                      f"bare {bare_rate:,.1f} img/s, ratio {harness_rate / bare_rate:.3f} (target >= 0.97)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
