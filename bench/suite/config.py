"""Recipes, presets and the command line, in one place.

A *recipe* is how a network is trained (optimizer, schedule, loss, augmentation); a *preset* is a
bundle of defaults for a whole suite (data source, epochs, batch, precision). Both are plain frozen
dataclasses so that a record can store exactly what ran, and every preset value can be overridden
from the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.measuring.cost import Pricing, add_cost_options, pricing
from bench.measuring.inference import InferenceOptions, add_inference_options, inference_options
from bench.results.tracking import ALL as ALL_TRACKERS, TRACKERS
from bench.suite.shards import shard_runs, shard_spec
from common.cli import (OneLineParser, add_plugin_option, load_plugins, non_negative_float, non_negative_int,
                      positive_float, positive_int)
from data.datasets import dataset_names, get_spec
from data.encode import synthetic_sizes, train_file_bytes
from data.loaders import RANDOM, default_num_workers, training_order
from models import model_entry, model_names, study_datasets, study_result

PRECISIONS = ("no", "fp16", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Recipe:
    """How one network is trained. `lr` is for a global batch of `lr_batch` when `scale_lr` is set."""

    name: str
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    schedule: str  # "constant", "multistep" (stepped per epoch) or "warmup-cosine" (stepped per step)
    epochs: int
    batch_size: int
    augment: str  # the dataset's augmentation family: "none", "paper" (the study's) or "fast"
    nesterov: bool = False
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_fraction: float = 0.0  # linear warm-up over this share of the run's steps ...
    warmup_max_epochs: float = 1.0  # ... but never longer than this many epochs
    scale_lr: bool = False
    lr_batch: int = 128
    per_model_lr: bool = False  # multiply by the model entry's fast_lr_scale

    def lr_for(self, model: str, global_batch: int) -> float:
        """Peak learning rate for this model and global batch size."""
        lr = self.lr * (model_entry(model).fast_lr_scale if self.per_model_lr else 1.0)
        return lr * global_batch / self.lr_batch if self.scale_lr else lr


RECIPES: dict[str, Recipe] = {
    # docs/STUDY.md, exactly: the study's recipes.
    "paper-vanilla": Recipe(
        name="paper-vanilla", lr=0.001, momentum=0.9, weight_decay=0.0, label_smoothing=0.0,
        schedule="constant", epochs=50, batch_size=128, augment="none",
    ),
    "paper-improved": Recipe(
        name="paper-improved", lr=0.01, momentum=0.9, weight_decay=4e-5, label_smoothing=0.1,
        schedule="multistep", milestones=(5, 27, 40, 47), gamma=0.1, epochs=50, batch_size=128,
        augment="paper",
    ),
    # Ours, for time to accuracy on a GPU: a large batch with the linear scaling rule, a short
    # warm-up (a tenth of the run, at most an epoch) then cosine decay per step, Nesterov momentum,
    # label smoothing, and cheap device-side flips/shifts. A model entry can scale the rate (VGG16
    # without batch norm gets a tenth).
    "fast": Recipe(
        name="fast", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1,
        schedule="warmup-cosine", warmup_fraction=0.1, warmup_max_epochs=1.0, epochs=12, batch_size=512,
        augment="fast",
        scale_lr=True, lr_batch=512, per_model_lr=True,
    ),
}

# The largest global batch each recipe has been run at as it stands: the study's recipes at their 128; `fast` at
# the batch its learning rate is stated for (lr 0.2 per 512 images). Beyond it the linear scaling rule is
# extrapolated (large batches often want a longer warm-up or LARS), and the suite's first lines say so.
CHECKED_GLOBAL_BATCH = {"paper-vanilla": 128, "paper-improved": 128, "fast": 512}

# The study pairs each vanilla model with the vanilla recipe and each improved one with the improved.
PAIRED = "paired"


def paired_recipe(model: str) -> str:
    return "paper-improved" if model_entry(model).is_improved else "paper-vanilla"


@dataclass(frozen=True)
class Preset:
    """Suite-wide defaults. `None` means: take it from the recipe (or the launcher, for precision)."""

    name: str
    recipe: str
    synthetic: bool
    epochs: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    channels_last: bool = False
    warmup_steps: int = 20
    synthetic_train: int = 2400  # synthetic images for train+val, when the data is synthetic
    synthetic_test: int = 400
    inference_batch: int = 256  # the batch of the trained model's inference throughput (bench/measuring/inference.py)


PRESETS: dict[str, Preset] = {
    "paper": Preset(name="paper", recipe=PAIRED, synthetic=False),
    "fast": Preset(name="fast", recipe="fast", synthetic=False, precision="bf16", channels_last=True),
    # Synthetic data and a few dozen steps: finishes in minutes on two CPU cores.
    "smoke": Preset(
        name="smoke", recipe="fast", synthetic=True, epochs=2, batch_size=32, warmup_steps=2,
        synthetic_train=640, synthetic_test=128, inference_batch=32,
    ),
}
AUTO = "auto"

@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; its hash names the run for records and --resume."""

    model: str
    dataset: str
    seed: int
    preset: str
    recipe: Recipe
    epochs: int
    batch_size: int
    precision: str
    channels_last: bool
    compile_mode: str | None
    synthetic: bool
    synthetic_train: int
    synthetic_test: int
    target_accuracy: float | None
    world_size: int
    num_machines: int = 1  # machines the world spans (8 GPUs on one machine or 4 on each of two)
    lr: float | None = None  # explicit override of the recipe's peak learning rate
    stop_at_target: bool = False  # end the run once validation accuracy reaches the target
    eval_every: int | None = None  # validate every this many steps (None: at each epoch's end)
    loader_order: str = RANDOM  # the training loader's (data/loaders.py training_order)
    # How a run is measured or where its files are, not what it computes: left out of its identity.
    warmup_steps: int = field(default=20, compare=False)
    num_workers: int = field(default=1, compare=False)
    data_dir: str | None = field(default=None, compare=False)
    checkpoint_minutes: float = field(default=5.0, compare=False)
    inference: InferenceOptions | None = field(default=InferenceOptions(), compare=False)  # None: --no-inference
    pricing: Pricing = field(default=Pricing(), compare=False)

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of every setting that changes the result."""
        identity = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        if self.num_machines == 1:  # one machine: the identity (and run id) it had before machines were counted
            del identity["num_machines"]
        if self.loader_order == RANDOM:  # likewise before the training order could be another
            del identity["loader_order"]
        identity["recipe"] = dataclasses.asdict(self.recipe)
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        source = f"{self.dataset}-synthetic" if self.synthetic else self.dataset
        return f"{self.preset}_{source}_{self.model}_{self.recipe.name}_{self.precision}_b{self.batch_size}_s{self.seed}_{digest}"

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def peak_lr(self) -> float:
        """--lr, else the recipe's rate for this model at this global batch."""
        return self.lr or self.recipe.lr_for(self.model, self.global_batch)


@dataclass(frozen=True)
class SuiteConfig:
    runs: tuple[RunConfig, ...]
    precision: str  # every run's: one Accelerator serves the suite
    notes: tuple[str, ...]  # choices the options left to the harness, said in the suite's first lines
    shard: tuple[int, int] | None  # (I, N): these runs are the I-th of N parts of the suite
    log_with: tuple[str, ...]  # experiment trackers (bench/results/tracking.py)
    results_dir: Path
    cache_dir: Path | None
    resume: bool
    keep_checkpoints: bool
    profile: bool
    overrides: tuple[str, ...] = ()  # the options given that override the preset and its recipes, as typed
    dry_run: bool = False  # print the resolved runs and train nothing
    loader_notes: tuple[str, ...] = ()  # how each dataset's training file will be read, said after the first line


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


def launcher_precision() -> str | None:
    """The launcher's mixed precision when it asked for one (accelerate launch exports it)."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    return value if value in ("fp16", "bf16") else None


def resolve_preset(requested: str, synthetic_override: bool | None, gpu_available: bool) -> tuple[Preset, str | None]:
    """Pick the preset; for `auto`, also say why in one line."""
    if requested != AUTO:
        return PRESETS[requested], None
    if gpu_available and synthetic_override is not True:
        return PRESETS["fast"], "preset auto -> fast: a GPU is present; training on the real datasets"
    return PRESETS["smoke"], (
        "preset auto -> smoke: no GPU here, so a short run on synthetic data "
        "(use --preset paper or --preset fast for the real job)"
    )


def recipe_batch(recipe: Recipe, num_processes: int) -> int:
    """Default batch per process. A recipe that does not rescale its learning rate (the study's) keeps
    its global batch, split across the processes."""
    if recipe.scale_lr:
        return recipe.batch_size
    if recipe.batch_size % num_processes:
        raise SystemExit(f"bench/run.py: error: recipe {recipe.name} trains with a global batch of {recipe.batch_size}, "
                         f"which {num_processes} processes cannot split evenly; pass --batch-size")
    return recipe.batch_size // num_processes


def resolve_precision(explicit: str | None, preset: Preset, gpu_available: bool,
                      native_bf16: bool) -> tuple[str, str | None]:
    """--precision, else the launcher's, else the preset's; a preset's bf16 only where the device computes
    bf16 natively (on a CPU without AVX512-BF16 or AMX torch emulates it ~10x slower than fp32)."""
    chosen = explicit or launcher_precision()
    if chosen:
        return chosen, None
    if preset.precision == "bf16" and not gpu_available:
        if not native_bf16:
            return "no", (f"precision no: preset {preset.name}'s bf16 would be emulated on this CPU (no AVX512-BF16 "
                          "or AMX), about 10x slower than fp32; --precision bf16 forces it")
        return "bf16", "precision bf16: this CPU computes bf16 natively (AVX512-BF16 or AMX)"
    return preset.precision or "no", None


def parse_suite(argv: Sequence[str] | None, gpu_available: bool, num_processes: int,
                native_bf16: bool = True, num_machines: int = 1) -> SuiteConfig:
    """Command line -> the list of runs, every value resolved (CLI over preset over recipe)."""
    load_plugins(argv, "bench/run.py")
    args = build_parser().parse_args(argv)
    preset, auto_reason = resolve_preset(args.preset, args.synthetic, gpu_available)
    synthetic = preset.synthetic if args.synthetic is None else args.synthetic
    precision, precision_reason = resolve_precision(args.precision, preset, gpu_available, native_bf16)
    channels_last = preset.channels_last if args.channels_last is None else args.channels_last
    warmup_steps = preset.warmup_steps if args.warmup_steps is None else args.warmup_steps
    num_workers = args.num_workers or default_num_workers()
    recipe_choice = args.recipe or preset.recipe
    runs, loader_notes = [], []
    memory = args.loader_memory * 1e9 if args.loader_memory else None
    for dataset in dict.fromkeys(args.datasets):  # a name given twice is one run, not two writing one record
        spec = get_spec(dataset)
        synthetic_train, synthetic_test = args.synthetic_size or synthetic_sizes(dataset, preset.synthetic_train,
                                                                                 preset.synthetic_test)
        file_bytes = train_file_bytes(dataset, synthetic_train if synthetic else None)
        order, why = training_order(file_bytes, num_processes, memory)
        loader_notes.append(f"loader: {dataset}'s train split (about {file_bytes / 1e9:,.2f} GB): {why}")
        for model in dict.fromkeys(args.models):
            recipe = RECIPES[paired_recipe(model) if recipe_choice == PAIRED else recipe_choice]
            study = None if synthetic else study_result(model, dataset)
            target = args.target_accuracy if args.target_accuracy is not None else (
                study.test_acc_pct / 100 if study else None)
            for seed in dict.fromkeys(args.seeds):
                runs.append(RunConfig(
                    model=model, dataset=dataset, seed=seed, preset=preset.name, recipe=recipe,
                    epochs=args.epochs or spec.epochs.get(preset.name) or preset.epochs or recipe.epochs,
                    batch_size=args.batch_size or preset.batch_size or recipe_batch(recipe, num_processes),
                    precision=precision, channels_last=channels_last, compile_mode=args.compile_mode,
                    synthetic=synthetic, synthetic_train=synthetic_train, synthetic_test=synthetic_test,
                    target_accuracy=target, world_size=num_processes, num_machines=num_machines,
                    warmup_steps=warmup_steps, num_workers=num_workers, lr=args.lr,
                    stop_at_target=args.stop_at_target, eval_every=args.eval_every, loader_order=order,
                    checkpoint_minutes=args.checkpoint_minutes, pricing=pricing(args),
                    inference=inference_options(args, preset.inference_batch),
                    data_dir=str(args.data_dir) if args.data_dir else None,
                ))
    return SuiteConfig(
        runs=shard_runs(tuple(runs), *args.shard) if args.shard else tuple(runs), precision=precision,
        notes=tuple(note for note in (auto_reason, precision_reason) if note), loader_notes=tuple(loader_notes),
        shard=args.shard, log_with=tuple(args.log_with), results_dir=args.results_dir,
        cache_dir=args.cache_dir, resume=args.resume, keep_checkpoints=args.keep_checkpoints,
        profile=args.profile, overrides=overrides(args), dry_run=args.dry_run,
    )
