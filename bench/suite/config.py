"""A suite's runs, every value resolved: what each run computes (`RunConfig`, which names it) and how the suite
carries them out (`RunContext`), from the command line over the preset over the recipe."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.measuring.cost import Pricing, pricing
from bench.measuring.inference import InferenceOptions, inference_options
from bench.suite.options import POWERSGD_HOOKS, build_parser, overrides
from bench.suite.preemption import Preemption
from bench.suite.recipes import AUTO, PAIRED, PRESETS, RECIPES, Preset, Recipe, paired_recipe
from bench.suite.shards import shard_runs
from common.cli import load_plugins
from data.datasets import get_spec
from data.encode import synthetic_sizes, train_file_bytes
from data.loaders import RANDOM, default_num_workers, training_order
from models import study_result


@dataclass(frozen=True)
class Communication:
    """How the processes exchange gradients (DDP, through Accelerate's DistributedDataParallelKwargs) and batch
    statistics (SyncBatchNorm). DDP's settings are fixed when the Accelerator is built: one value per launch."""

    comm_hook: str = "no"  # Accelerate's DDPCommunicationHookType: no, fp16, bf16, power_sgd, batched_power_sgd
    powersgd_rank: int | None = None  # PowerSGD's matrix approximation rank (power_sgd hooks only)
    bucket_cap_mb: int | None = None  # DDP's bucket size in MiB (None: DDP's default)
    gradient_as_bucket_view: bool = False
    static_graph: bool = False
    sync_bn: bool = False  # batch norm statistics over all processes (torch.nn.SyncBatchNorm)

    def identity(self) -> dict:
        """The settings that differ from their defaults: a run id hashes only these, so that a run at the defaults
        keeps the id it had before they existed."""
        defaults = Communication()
        return {name: value for name, value in dataclasses.asdict(self).items() if value != getattr(defaults, name)}

    def words(self) -> str:
        """The settings that differ from their defaults, in words ("" at the defaults)."""
        return ", ".join(name if value is True else f"{name} {value}" for name, value in self.identity().items())


@dataclass(frozen=True)
class RunConfig:
    """Everything that changes a run's result, and nothing else: its hash names the run for records and --resume."""

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
    loader_order: str = RANDOM  # how the training loader reads its file (data/loaders.py training_order)
    communication: Communication = Communication()  # DDP's communication hook, buckets and graph; SyncBatchNorm

    def to_json(self) -> dict:
        """The record's `config`."""
        return dataclasses.asdict(self)

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of every setting that changes the result."""
        identity = self.to_json()
        # Settings added after run ids were first published are hashed only away from their defaults, so that the
        # runs that do not use them keep their ids: one machine; DDP's and batch norm's defaults.
        if self.num_machines == 1:
            del identity["num_machines"]
        if self.loader_order == RANDOM:  # likewise before the training order could be another
            del identity["loader_order"]
        if changed := self.communication.identity():
            identity["communication"] = changed
        else:
            del identity["communication"]
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
class RunContext:
    """How the suite's runs are carried out and where their files go: nothing here changes a result or a run id."""

    results_dir: Path
    cache_dir: Path | None = None  # the .beton files (default: data/cache)
    data_dir: Path | None = None  # the raw datasets (default: $DEEPNETS_DATA_DIR, else a download)
    warmup_steps: int = 20  # training steps before the timed window opens
    num_workers: int = 1  # loader threads per process
    checkpoint_minutes: float = 5.0  # a resumable state at the first epoch end this long after the last
    resume: bool = False
    keep_checkpoints: bool = False
    profile: bool = False
    inference: InferenceOptions | None = InferenceOptions()  # None: --no-inference
    pricing: Pricing = Pricing()
    preemption: Preemption | None = None  # the signals that stop a run at its next step
    comm_probe_repeats: int = 5  # the communication probe after a run of several processes (0: none) ...
    comm_probe_steps: int = 3  # ... of this many steps with and without gradient synchronisation each

    def settings_json(self) -> dict:
        """What of this shapes a run's measurements: the record's `settings`."""
        return {"warmup_steps": self.warmup_steps, "num_workers": self.num_workers,
                "data_dir": str(self.data_dir) if self.data_dir else None,
                "checkpoint_minutes": self.checkpoint_minutes,
                "inference": dataclasses.asdict(self.inference) if self.inference else None,
                "pricing": dataclasses.asdict(self.pricing), "comm_probe_repeats": self.comm_probe_repeats,
                "comm_probe_steps": self.comm_probe_steps}


@dataclass(frozen=True)
class SuiteConfig:
    runs: tuple[RunConfig, ...]
    context: RunContext
    precision: str  # every run's: one Accelerator serves the suite
    notes: tuple[str, ...]  # choices the options left to the harness, said in the suite's first lines
    shard: tuple[int, int] | None  # (I, N): these runs are the I-th of N parts of the suite
    log_with: tuple[str, ...]  # experiment trackers
    overrides: tuple[str, ...] = ()  # the options given that override the preset and its recipes, as typed
    dry_run: bool = False  # print the resolved runs and train nothing
    loader_notes: tuple[str, ...] = ()  # how each dataset's training file will be read, said after the first line
    communication: Communication = Communication()  # every run's: one Accelerator serves the suite


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


def communication_of(args, parser) -> Communication:
    """The communication options as a Communication; a PowerSGD rank without a PowerSGD hook is an error."""
    powersgd = args.comm_hook in POWERSGD_HOOKS
    if args.powersgd_rank is not None and not powersgd:
        parser.error(f"argument --powersgd-rank: the rank is PowerSGD's; expected --comm-hook "
                     f"{' or '.join(POWERSGD_HOOKS)} with it, got --comm-hook {args.comm_hook}")
    return Communication(comm_hook=args.comm_hook, powersgd_rank=(args.powersgd_rank or 1) if powersgd else None,
                         bucket_cap_mb=args.bucket_cap_mb, gradient_as_bucket_view=args.gradient_as_bucket_view,
                         static_graph=args.static_graph, sync_bn=args.sync_bn)


def parse_suite(argv: Sequence[str] | None, gpu_available: bool, num_processes: int, native_bf16: bool = True,
                num_machines: int = 1, preemption: Preemption | None = None) -> SuiteConfig:
    """Command line -> the list of runs, every value resolved (CLI over preset over recipe), and their context."""
    load_plugins(argv, "bench/run.py")
    parser = build_parser()
    args = parser.parse_args(argv)
    preset, auto_reason = resolve_preset(args.preset, args.synthetic, gpu_available)
    synthetic = preset.synthetic if args.synthetic is None else args.synthetic
    precision, precision_reason = resolve_precision(args.precision, preset, gpu_available, native_bf16)
    channels_last = preset.channels_last if args.channels_last is None else args.channels_last
    recipe_choice = args.recipe or preset.recipe
    communication = communication_of(args, parser)
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
                    target_accuracy=target, world_size=num_processes, num_machines=num_machines, lr=args.lr,
                    stop_at_target=args.stop_at_target, eval_every=args.eval_every, loader_order=order,
                    communication=communication,
                ))
    context = RunContext(
        results_dir=args.results_dir, cache_dir=args.cache_dir, data_dir=args.data_dir,
        warmup_steps=preset.warmup_steps if args.warmup_steps is None else args.warmup_steps,
        num_workers=args.num_workers or default_num_workers(), checkpoint_minutes=args.checkpoint_minutes,
        resume=args.resume, keep_checkpoints=args.keep_checkpoints, profile=args.profile,
        inference=inference_options(args, preset.inference_batch), pricing=pricing(args), preemption=preemption,
        comm_probe_repeats=args.comm_probe_repeats, comm_probe_steps=args.comm_probe_steps)
    return SuiteConfig(
        runs=shard_runs(tuple(runs), *args.shard) if args.shard else tuple(runs), context=context, precision=precision,
        notes=tuple(note for note in (auto_reason, precision_reason) if note), shard=args.shard,
        log_with=tuple(args.log_with), overrides=overrides(args), dry_run=args.dry_run,
        loader_notes=tuple(loader_notes), communication=communication,
    )
