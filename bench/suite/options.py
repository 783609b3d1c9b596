"""The runner's command line: its options by group, their checked types, and which of them override the preset."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from accelerate.utils import DDPCommunicationHookType

from bench.measuring.cost import add_cost_options
from bench.measuring.inference import add_inference_options
from bench.results.tracking import ALL as ALL_TRACKERS, TRACKERS
from bench.suite.recipes import AUTO, COMPILE_MODES, PAIRED, PRECISIONS, PRESETS, RECIPES
from bench.suite.shards import shard_spec
from common.cli import (OneLineParser, add_plugin_option, non_negative_float, non_negative_int, positive_float,
                        positive_int)
from data.datasets import dataset_names
from models import model_names, study_datasets

def add_collective_timeout(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument("--collective-timeout-s", type=positive_float, default=600, metavar="S",
                       help="end the run when another process has not joined a collective for S seconds (a machine "
                       "that died, a hung peer), with one line, instead of waiting forever (default %(default)s, "
                       "NCCL's own)")


def collective_timeout(argv: Sequence[str] | None) -> float:
    """--collective-timeout-s alone, read before the process group exists (parse_suite needs its size)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_collective_timeout(parser)
    return parser.parse_known_args(argv)[0].collective_timeout_s


COMM_HOOKS = tuple(hook.value for hook in DDPCommunicationHookType)  # Accelerate's names: no, fp16, bf16, power_sgd, ...
POWERSGD_HOOKS = ("power_sgd", "batched_power_sgd")
SWITCHES = {"off": (False,), "on": (True,), "both": (False, True)}  # a switch swept by bench.scaling


def add_communication_options(group: argparse._ArgumentGroup, sweep: bool = False) -> None:
    """How the processes communicate: one value each for the runner (one Accelerator per launch); with `sweep`
    (bench.scaling) several values, and `off`, `on` or `both` for a switch, each value a launch of its own."""
    many = {"nargs": "+"} if sweep else {}
    group.add_argument("--comm-hook", choices=COMM_HOOKS, default=["no"] if sweep else "no", metavar="HOOK", **many,
                       help="DDP communication hook, through Accelerate's DistributedDataParallelKwargs: no (plain "
                       "all-reduce), fp16 or bf16 (gradients halved on the wire), power_sgd or batched_power_sgd "
                       f"(low-rank, --powersgd-rank) (default: no). Valid: {', '.join(COMM_HOOKS)}")
    group.add_argument("--powersgd-rank", type=positive_int, metavar="R", **many,
                       help="PowerSGD's matrix approximation rank (default 1; with --comm-hook power_sgd or "
                       "batched_power_sgd only)")
    group.add_argument("--bucket-cap-mb", type=positive_int, metavar="MB", **many,
                       help="DDP's gradient bucket size in MiB (default: DDP's, 25)")
    for name, what in (("gradient-as-bucket-view", "gradients as views into DDP's buckets (saves a copy)"),
                       ("static-graph", "DDP's static_graph (the same parameters used every step)"),
                       ("sync-bn", "SyncBatchNorm: batch-norm statistics over all processes (CUDA only)")):
        if sweep:
            group.add_argument(f"--{name}", nargs="?", choices=tuple(SWITCHES), const="on", default="off",
                               help=f"{what}: off (default), on (the option alone) or both, a launch each")
        else:
            group.add_argument(f"--{name}", action="store_true", help=what)


def accuracy_fraction(text: str) -> float:
    """Accept 0.85 or 85 (percent) and return a fraction."""
    value = positive_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected an accuracy in (0, 1] or a percentage in (1, 100], got {text!r}")
    return value / 100 if value > 1 else value


def results_folder(text: str) -> Path:
    """A folder for results: absent (created later) or a directory, never an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a folder for the results")
    return path


def build_parser() -> OneLineParser:
    models, datasets, study = model_names(), dataset_names(), study_datasets()
    parser = OneLineParser(
        prog="bench/run.py",
        description="Train and measure image-classification CNNs on FFCV-encoded 64x64 datasets under Accelerate.",
        epilog="Launch with `accelerate launch bench/run.py ...`: without an Accelerate config it starts one process "
        "per visible GPU, and --batch-size is per process. `--dry-run` prints what would run (global batch, lr, "
        "precision, epochs) and trains nothing.",
    )
    what = parser.add_argument_group("what to run")
    what.add_argument("--models", nargs="+", choices=models, default=list(models), metavar="MODEL",
                      help=f"models to run (default: all). Valid: {', '.join(models)}")
    what.add_argument("--datasets", nargs="+", choices=datasets, default=list(study), metavar="DATASET",
                      help=f"datasets (default: the study's, {', '.join(study)}). Valid: {', '.join(datasets)}")
    what.add_argument("--preset", choices=(AUTO, *PRESETS), default=AUTO,
                      help="auto (default): 'fast' on real data when a GPU is present, else 'smoke'")
    what.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0], help="one run per seed (default: 0)")
    add_plugin_option(what)
    what.add_argument("--dry-run", action="store_true",
                      help="print the resolved runs (run id, global batch, lr, precision, epochs) and what the "
                      "options override, then stop: nothing is trained or written")

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--recipe", choices=(PAIRED, *RECIPES), default=None,
                        help="training recipe (default: the preset's). 'paired' = the study's pairing: "
                        "vanilla models with paper-vanilla, improved ones with paper-improved")
    recipe.add_argument("--epochs", type=positive_int, help="epochs per run (default: the recipe's)")
    recipe.add_argument("--batch-size", type=positive_int,
                        help="batch size PER PROCESS (global batch = this x number of processes; default: the "
                        "preset's, else the recipe's; the study's recipes split their global 128 across processes)")
    recipe.add_argument("--lr", type=positive_float,
                        help="peak learning rate (default: the recipe's, scaled to the global batch)")
    recipe.add_argument("--target-accuracy", type=accuracy_fraction,
                        help="validation accuracy for time-to-target, as 0.99 or 99 (default: the study's test "
                        "accuracy for that model and dataset when it has one; none on synthetic data)")
    recipe.add_argument("--stop-at-target", action="store_true",
                        help="time-to-accuracy mode: end each run as soon as its validation accuracy reaches the "
                        "target, then test once (a run that never gets there trains all its epochs)")
    recipe.add_argument("--eval-every", type=positive_int, metavar="STEPS",
                        help="validate every STEPS training steps (and at the end) instead of after every epoch, "
                        "so that time to target is measured more finely; validation time counts in the wall-clock "
                        "figure")

    speed = parser.add_argument_group("precision and speed")
    speed.add_argument("--precision", choices=PRECISIONS,
                       help="mixed precision (default: the launcher's --mixed_precision if fp16/bf16, else the preset's)")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format (default: the preset's)")
    speed.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, default=None,
                       dest="compile_mode", help="torch.compile the model (mode 'reduce-overhead' uses CUDA graphs)")
    speed.add_argument("--warmup-steps", type=non_negative_int, help="training steps excluded from throughput")
    speed.add_argument("--num-workers", type=positive_int, default=None,
                       help="FFCV loader threads per process (default: CPU cores / processes)")
    speed.add_argument("--profile", action="store_true", help="capture a torch.profiler trace of a few steps per run")
    speed.add_argument("--comm-probe-repeats", type=non_negative_int, default=5, metavar="R",
                       help="after a run of several processes, time its steps with and without gradient "
                       "synchronisation in R alternating repeats (the exposed communication, with its spread), and "
                       "the all-reduce of a bucket and of the gradient R times (default %(default)s; 0: no probe)")
    speed.add_argument("--comm-probe-steps", type=positive_int, default=3, metavar="S",
                       help="steps per repeat and mode of that probe (default %(default)s)")
    add_inference_options(speed)

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, default=None,
                      help="directory with the raw datasets (default: $DEEPNETS_DATA_DIR, else download)")
    data.add_argument("--cache-dir", type=Path, default=None, help="where .beton files go (default: data/cache)")
    data.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                      help="use the learnable synthetic data instead of the real datasets (default: the preset's)")
    data.add_argument("--synthetic-size", nargs=2, type=positive_int, metavar=("TRAIN", "TEST"), default=None,
                      help="images in the synthetic train(+val) and test sets (default: the preset's)")
    data.add_argument("--loader-memory", type=positive_float, metavar="GB", default=None,
                      help="memory a training file may fill through the page cache (default: three quarters of this "
                      "machine's); in one process a larger file is read in quasi-random order instead, which is "
                      "part of the run's identity")

    output = parser.add_argument_group("output")
    output.add_argument("--results-dir", type=results_folder, default=Path("results"),
                        help="records and tables (default: results/)")
    output.add_argument("--resume", action="store_true",
                        help="skip runs that already have a record and continue unfinished ones from their checkpoint")
    output.add_argument("--keep-checkpoints", action="store_true", help="keep the last checkpoint of finished runs")
    output.add_argument("--checkpoint-minutes", type=non_negative_float, default=5.0, metavar="M",
                        help="save a resumable checkpoint at the end of an epoch once M minutes have passed since "
                        "the last one (default 5: a kill loses at most that much training plus the epoch in "
                        "progress); 0 = after every epoch")
    add_cost_options(output)

    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--shard", type=shard_spec, metavar="I/N",
                         help="run only the I-th of N disjoint parts of the suite, balanced by expected training "
                         "FLOPs (for job arrays: N jobs with the same options and --results-dir make the whole suite)")
    add_collective_timeout(cluster)
    add_communication_options(parser.add_argument_group(
        "communication between processes", "part of each run's identity; fixed for a launch (DDP's settings are "
        "fixed when the Accelerator is built)"))

    tracking = parser.add_argument_group("tracking")
    tracking.add_argument("--log-with", nargs="+", choices=(ALL_TRACKERS, *TRACKERS), default=[], metavar="TRACKER",
                          help=f"also log every run to these experiment trackers through Accelerate ({ALL_TRACKERS}: "
                          f"every installed one). Valid: {', '.join(TRACKERS)}; each is an extra, e.g. "
                          "pip install 'deepnets-bench[tensorboard]'")
    return parser


# Options that override what the preset and its recipes would choose: shown by the first lines and --dry-run.
OVERRIDING = ("recipe", "epochs", "batch_size", "lr", "precision", "channels_last", "compile_mode", "synthetic",
              "synthetic_size", "warmup_steps", "target_accuracy")


def overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """The overriding options the command line gave, as `--option value`."""
    given = []
    for dest in OVERRIDING:
        value = getattr(args, dest)
        if value is None:
            continue
        option = "--compile" if dest == "compile_mode" else f"--{dest.replace('_', '-')}"
        if isinstance(value, bool):
            given.append(option if value else f"--no-{option[2:]}")
        else:
            given.append(f"{option} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return tuple(given)
