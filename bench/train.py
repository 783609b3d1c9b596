"""One training run under Accelerate: data, model, loop, evaluation, checkpoints, measurements.

Read top to bottom like torchvision's reference script: `train_run` sets up, `train_one_epoch` and
`evaluate` are plain functions. Per step the loop does no host sync (metrics accumulate on the device
and are read every `LOG_EVERY` steps and at epoch end).
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from bench import records
from bench.config import RunConfig
from bench.environment import environment
from bench.measure import (WindowTimer, peak_memory_bytes, peak_tflops, reset_peak_memory, synchronize,
                           time_to_target)
from bench.profiling import StepProfiler
from data.errors import DataError
from data.augment import CIFAR10_PAPER_AUG, MNIST_PAPER_AUG, AugmentConfig, DevicePreprocess
from data.encode import prepare_dataset
from data.loaders import make_loader, set_loader_epoch
from models import build_model
from models.facts import model_facts

LOG_EVERY = 50  # steps between host reads of the running loss (progress bar, divergence check)

AUGMENTATIONS: dict[str, dict[str, AugmentConfig | None]] = {
    "none": {"mnist": None, "cifar10": None},
    "paper": {"mnist": MNIST_PAPER_AUG, "cifar10": CIFAR10_PAPER_AUG},
    # Cheap shifts (and flips where the classes allow it): what fast CIFAR-10 training uses.
    "fast": {
        "mnist": AugmentConfig(degrees=10.0, translate=(0.1, 0.1)),
        "cifar10": AugmentConfig(hflip_p=0.5, translate=(0.125, 0.125)),
    },
}


@dataclass
class Training:
    """The prepared pieces of one run that every epoch uses."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step_schedule: bool
    criterion: torch.nn.Module
    loaders: dict
    counts: dict[str, int]
    train_preprocess: DevicePreprocess
    eval_preprocess: DevicePreprocess
    generator: torch.Generator
    profiler: StepProfiler | None = None


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int  # in the timed window, all processes
    images_per_s: float  # summed over processes
    images_per_s_per_process: list[float]
    data_stall: float
    seconds: float  # wall time of the whole epoch's training (timed window or not)


@dataclass
class EvalResult:
    loss: float
    acc: float
    images_per_s: float
    seconds: float


OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")  # CUDA, and the CPU allocator's


def is_oom(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(text in message for text in OOM_MESSAGES)


def gather_rows(accelerator: Accelerator, values: list[float]) -> torch.Tensor:
    """One row of floats per process, as a (world, len(values)) CPU tensor."""
    local = torch.tensor([values], dtype=torch.float64, device=accelerator.device)
    return accelerator.gather(local).cpu()


def rates(per_process: torch.Tensor) -> list[float]:
    """Images/s of each process from gathered (images, seconds, ...) rows."""
    return [float(row[0] / row[1]) if row[1] > 0 else 0.0 for row in per_process]


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def make_schedule(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    """(scheduler, per_step): the recipe's LR schedule, stepped by the loop, never by Accelerate."""
    recipe = cfg.recipe
    if recipe.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma), False
    if recipe.schedule == "warmup-cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        warm = min(total - 1, int(recipe.warmup_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), False


def train_one_epoch(parts: Training, accelerator: Accelerator, timer: WindowTimer, start_timing_at: int, step: int,
                    description: str) -> tuple[EpochResult, int]:
    """Train for one pass over the training loader; returns the epoch's result and the updated step counter."""
    model, loader, optimizer, scheduler = parts.model, parts.loaders["train"], parts.optimizer, parts.scheduler
    model.train()
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    # Main process only, and only on a terminal (disable=None): logs get the per-epoch line instead.
    bar = tqdm(total=len(loader), desc=description, disable=None if accelerator.is_main_process else True,
               leave=False, mininterval=2.0, dynamic_ncols=True)
    epoch_start = time.perf_counter()
    batches = iter(loader)
    while True:
        if step >= start_timing_at and not timer.running:
            timer.start()  # before the wait, so the window and the stall cover the same time
        wait_start = time.perf_counter()
        try:
            images, labels, _ = next(batches)
        except StopIteration:
            break
        timer.count(labels.shape[0], time.perf_counter() - wait_start)
        inputs = parts.train_preprocess(images, parts.generator)
        outputs = model(inputs)
        loss = parts.criterion(outputs, labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if parts.per_step_schedule:
            scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (outputs.detach().argmax(dim=1) == labels).sum()
        seen += labels.shape[0]
        step += 1
        if parts.profiler is not None:
            parts.profiler.step(step)
        bar.update(1)
        if step % LOG_EVERY == 0:
            # Reduced, so that every rank sees the same value and stops together.
            running = accelerator.reduce(loss_sum.clone(), reduction="mean").item() / seen
            if not math.isfinite(running):
                raise RunDiverged(f"training loss became {running} at step {step}")
            if accelerator.is_main_process:
                elapsed = timer.elapsed()
                rate = timer.images / elapsed * accelerator.num_processes if elapsed > 0 else 0.0
                bar.set_postfix(loss=f"{running:.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:,.0f}")
    timer.stop()
    synchronize(device)
    seconds = time.perf_counter() - epoch_start
    bar.close()
    totals = torch.stack([loss_sum, correct.to(torch.float64), torch.tensor(float(seen), device=device, dtype=torch.float64)])
    totals = accelerator.reduce(totals, reduction="sum").cpu()
    if not math.isfinite(float(totals[0])):
        raise RunDiverged(f"training loss became {float(totals[0])} in the epoch ending at step {step}")
    per_process = gather_rows(accelerator, [timer.images, timer.seconds, timer.data_wait_s])
    process_rates = rates(per_process)
    stall = float((per_process[:, 2] / per_process[:, 1].clamp_min(1e-9)).mean())
    count = max(1.0, float(totals[2]))
    return EpochResult(loss=float(totals[0]) / count, acc=float(totals[1]) / count, images=int(per_process[:, 0].sum()),
                       images_per_s=sum(process_rates), images_per_s_per_process=process_rates, data_stall=stall,
                       seconds=seconds), step


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, preprocess: Callable, num_samples: int, accelerator: Accelerator) -> EvalResult:
    """Loss and accuracy over a split, each sample counted exactly once across processes.

    Every rank writes its per-sample results into tensors indexed by the sample's stored index; the
    distributed loader's padding repeats samples, which then just rewrite the same slot. A max-reduce
    merges the ranks. Loss here is plain cross-entropy (no label smoothing), comparable across recipes.
    """
    model.eval()
    device = accelerator.device
    losses = torch.zeros(num_samples, device=device, dtype=torch.float32)
    correct = torch.zeros(num_samples, device=device, dtype=torch.float32)
    covered = torch.zeros(num_samples, device=device, dtype=torch.float32)
    timer = WindowTimer(device)
    timer.start()
    for images, labels, indices in loader:
        timer.count(labels.shape[0], 0.0)
        outputs = model(preprocess(images)).float()
        losses[indices] = F.cross_entropy(outputs, labels, reduction="none")
        correct[indices] = (outputs.argmax(dim=1) == labels).float()
        covered[indices] = 1.0
    timer.stop()
    for tensor in (losses, correct, covered):
        all_reduce_max_(tensor)
    missing = int(num_samples - covered.sum().item())
    if missing:
        raise RuntimeError(f"evaluation missed {missing} of {num_samples} samples")
    images_per_s = sum(rates(gather_rows(accelerator, [timer.images, timer.seconds])))
    return EvalResult(loss=losses.mean().item(), acc=correct.mean().item(), images_per_s=images_per_s, seconds=timer.seconds)


def save_checkpoint(accelerator: Accelerator, results_dir: Path, run_id: str, epoch: int, scheduler,
                    history: list[dict], totals: dict) -> None:
    """Save the state of a completed epoch; progress.json is renamed into place last, so it always
    names a complete state folder, and older folders are removed only after that."""
    folder = records.checkpoint_dir(results_dir, run_id)
    state_name = f"epoch-{epoch:04d}"
    accelerator.save_state(str(folder / state_name))
    accelerator.wait_for_everyone()  # every rank's part of the state is on disk before progress.json names it
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), folder / state_name / "lr_scheduler.pt")
        records.write_json_atomic(folder / "progress.json",
                                  {"epoch": epoch, "state": state_name, "history": history, "totals": totals})
        records.prune_states(folder, keep=state_name)
    accelerator.wait_for_everyone()


def train_run(cfg: RunConfig, accelerator: Accelerator, results_dir: Path, cache_dir: Path | None,
              resume: bool, keep_checkpoints: bool, profile: bool) -> dict:
    """Train and measure one configuration; returns its record (the caller writes it)."""
    started = time.time()
    record = {
        "schema": records.RECORD_SCHEMA, "run_id": cfg.run_id, "status": "failed", "error": None,
        "model": cfg.model, "dataset": cfg.dataset, "data_source": "synthetic" if cfg.synthetic else "real",
        "preset": cfg.preset, "recipe": cfg.recipe.name, "seed": cfg.seed, "precision": cfg.precision,
        "batch_size": cfg.batch_size, "global_batch_size": cfg.batch_size * accelerator.num_processes,
        "world_size": accelerator.num_processes, "config": asdict(cfg),
        "env": environment(accelerator), "history": [], "metrics": {},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    record["device"] = record["env"]["device_name"]
    try:
        _train(cfg, accelerator, results_dir, cache_dir, resume, profile, record, started)
        record["status"] = "finished"
    except RunDiverged as error:
        record["status"], record["error"] = "diverged", str(error)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(error):
            raise
        record["status"], record["error"] = "oom", str(error).splitlines()[0]
    finally:
        accelerator.free_memory()
        if cfg.compile_mode:
            torch.compiler.reset()  # the next run must not inherit compiled frames or CUDA-graph pools
        gc.collect()
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
    # Finished, diverged and OOM runs are final (--resume skips them): their checkpoints are done with.
    if not keep_checkpoints:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            records.remove_checkpoints(results_dir, cfg.run_id)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["metrics"]["wall_time_s"] = record["metrics"].get("wall_time_before_resume_s", 0.0) + time.time() - started
    return record


def _train(cfg: RunConfig, accelerator: Accelerator, results_dir: Path, cache_dir: Path | None,
           resume: bool, profile: bool, record: dict, started: float) -> None:
    device = accelerator.device
    set_seed(cfg.seed, device_specific=True)  # rank 0 keeps the seed; DDP copies its weights to the others
    with accelerator.main_process_first():
        encoded = prepare_dataset(cfg.dataset, data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
                                  cache_dir=cache_dir, synthetic=cfg.synthetic,
                                  synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test)
    spec = encoded.spec
    distributed = accelerator.num_processes > 1
    loaders = {
        split: make_loader(encoded.paths[split], batch_size=cfg.batch_size, train=(split == "train"), device=device,
                           seed=cfg.seed, distributed=distributed, num_workers=cfg.num_workers)
        for split in ("train", "val", "test")
    }
    if len(loaders["train"]) == 0:
        raise DataError(f"--batch-size {cfg.batch_size}: no full training batch from {encoded.counts['train']} images "
                        f"over {accelerator.num_processes} process(es); expected a smaller batch size")
    facts = model_facts(cfg.model, spec.channels)
    record["facts"] = asdict(facts)

    model = build_model(cfg.model, spec.channels, spec.num_classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipe = cfg.recipe
    global_batch = cfg.batch_size * accelerator.num_processes
    peak_lr = cfg.lr or recipe.lr_for(cfg.model, global_batch)
    # Fused SGD on CUDA: one kernel for the update, and fp16 loss scaling without a host sync per step.
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                weight_decay=recipe.weight_decay, fused=device.type == "cuda" or None)
    if accelerator.scaler is not None:  # fp16: a fresh loss scale per run, not the previous run's
        accelerator.scaler = torch.amp.GradScaler(device.type)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile_mode:
        model = torch.compile(model, mode=cfg.compile_mode)
    scheduler, per_step = make_schedule(optimizer, cfg, len(loaders["train"]))
    augment = AUGMENTATIONS[recipe.augment][cfg.dataset]
    parts = Training(
        model=model, optimizer=optimizer, scheduler=scheduler, per_step_schedule=per_step,
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing), loaders=loaders,
        counts=encoded.counts, train_preprocess=DevicePreprocess(spec.mean, spec.std, augment, cfg.channels_last),
        eval_preprocess=DevicePreprocess(spec.mean, spec.std, None, cfg.channels_last),
        generator=torch.Generator(device=device),
    )
    record["metrics"]["peak_lr"] = peak_lr

    history: list[dict] = []
    # Timed-window sums over epochs: images, seconds at the global rate, and seconds stalled on data;
    # and the run's wall time so far, carried across resumes.
    totals = {"timed_images": 0, "timed_seconds": 0.0, "stall_seconds": 0.0, "wall_time_s": 0.0}
    start_epoch = 0
    progress = records.read_progress(results_dir, cfg.run_id) if resume else None
    if progress:
        state = records.checkpoint_dir(results_dir, cfg.run_id) / progress["state"]
        accelerator.load_state(str(state))
        scheduler.load_state_dict(torch.load(state / "lr_scheduler.pt", weights_only=True))
        history, totals, start_epoch = progress["history"], progress["totals"], progress["epoch"]
        record["history"] = history
        record["metrics"]["wall_time_before_resume_s"] = totals.get("wall_time_s", 0.0)
        accelerator.print(f"resuming {cfg.run_id} after epoch {start_epoch}")
    elif accelerator.is_main_process:
        records.remove_checkpoints(results_dir, cfg.run_id)
    wall_before = totals.get("wall_time_s", 0.0)

    reset_peak_memory(device)
    if profile and accelerator.is_main_process:
        parts.profiler = StepProfiler(results_dir / "profiles" / cfg.run_id, device, cfg.warmup_steps)
    start_timing_at = cfg.warmup_steps + (StepProfiler.steps if profile else 0)
    step = 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            step = _run_epoch(cfg, accelerator, parts, epoch, step, start_timing_at, history, totals)
            totals["wall_time_s"] = wall_before + time.time() - started
            record["history"] = history
            save_checkpoint(accelerator, results_dir, cfg.run_id, epoch + 1, scheduler, history, totals)
    finally:
        if parts.profiler is not None:
            parts.profiler.close()
    test = evaluate(model, loaders["test"], parts.eval_preprocess, encoded.counts["test"], accelerator)
    allocated, reserved = peak_memory_bytes(device)
    memory = gather_rows(accelerator, [allocated, reserved]).max(dim=0).values
    record["metrics"].update(summarise(cfg, accelerator, history, totals, test, facts.train_gflops,
                                       int(memory[0]), int(memory[1])))


def _run_epoch(cfg: RunConfig, accelerator: Accelerator, parts: Training, epoch: int, step: int, start_timing_at: int,
               history: list[dict], totals: dict) -> int:
    """Train one epoch, validate, and append to history/totals; returns the step counter."""
    set_loader_epoch(parts.loaders["train"], epoch)
    # Augmentation randomness per (seed, epoch, rank): reproducible, and the same after a resume.
    parts.generator.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + accelerator.process_index)
    timer = WindowTimer(accelerator.device)
    lr = parts.optimizer.param_groups[0]["lr"]  # at the epoch's first step
    train, step = train_one_epoch(parts, accelerator, timer, start_timing_at, step,
                                  description=f"{cfg.model} {cfg.dataset} {epoch + 1}/{cfg.epochs}")
    if not parts.per_step_schedule:
        parts.scheduler.step()
    val = evaluate(parts.model, parts.loaders["val"], parts.eval_preprocess, parts.counts["val"], accelerator)
    if train.images:
        timed = train.images / train.images_per_s
        totals["timed_images"] += train.images
        totals["timed_seconds"] += timed
        totals["stall_seconds"] += train.data_stall * timed
    history.append({
        "epoch": epoch + 1, "train_loss": train.loss, "train_acc": train.acc, "val_loss": val.loss,
        "val_acc": val.acc, "train_time_s": train.seconds, "eval_time_s": val.seconds,
        "train_images_per_s": train.images_per_s, "train_images_per_s_per_process": train.images_per_s_per_process,
        "eval_images_per_s": val.images_per_s,
        "data_stall": train.data_stall, "lr": lr,
    })
    accelerator.print(f"{cfg.model} {cfg.dataset} epoch {epoch + 1}/{cfg.epochs}: train loss {train.loss:.4f} "
                      f"acc {train.acc:.4f} | val loss {val.loss:.4f} acc {val.acc:.4f} | "
                      f"{train.images_per_s:,.0f} img/s, stall {train.data_stall:.1%}")
    return step


def summarise(cfg: RunConfig, accelerator: Accelerator, history: list[dict], totals: dict, test: EvalResult,
              train_gflops: float, peak_allocated: int, peak_reserved: int) -> dict:
    """The run's headline numbers from its per-epoch history and timed totals."""
    best = max(history, key=lambda row: row["val_acc"])
    timed_seconds = totals["timed_seconds"]
    images_per_s = totals["timed_images"] / timed_seconds if timed_seconds > 0 else 0.0
    peak, peak_source = peak_tflops(accelerator.device, cfg.precision)
    achieved = train_gflops * images_per_s / 1e3  # TFLOP/s
    seconds_to_target, epochs_to_target = time_to_target(history, cfg.target_accuracy)
    eval_rates = [row["eval_images_per_s"] for row in history[1:]] or [history[0]["eval_images_per_s"]]
    train_seconds = sum(row["train_time_s"] for row in history)
    return {
        "epochs_completed": len(history),
        "train_loss": history[-1]["train_loss"], "train_acc": history[-1]["train_acc"],
        "val_loss": history[-1]["val_loss"], "val_acc": history[-1]["val_acc"],
        "best_val_acc": best["val_acc"], "best_val_epoch": best["epoch"],
        "test_loss": test.loss, "test_acc": test.acc,
        "train_images_per_s": images_per_s,
        "eval_images_per_s": (sum(eval_rates) + test.images_per_s) / (len(eval_rates) + 1),
        "train_time_s": train_seconds,
        "eval_time_s": sum(row["eval_time_s"] for row in history) + test.seconds,
        "epoch_time_s": train_seconds / len(history),
        "data_stall": totals["stall_seconds"] / timed_seconds if timed_seconds > 0 else 0.0,
        "target_accuracy": cfg.target_accuracy,
        "time_to_target_s": seconds_to_target, "epochs_to_target": epochs_to_target,
        "achieved_tflops": achieved, "peak_tflops": peak * accelerator.num_processes, "peak_tflops_source": peak_source,
        "mfu": achieved / (peak * accelerator.num_processes) if peak > 0 else None,
        "peak_mem_allocated_bytes": peak_allocated, "peak_mem_reserved_bytes": peak_reserved,
    }
