"""The per-step code of a run, as plain functions in the manner of torchvision's reference script: `train_steps` (no host
sync per step) and `evaluate` (each sample counted once across processes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from bench.measuring.measure import WindowTimer, all_reduce_max_, reset_peak_memory, synchronize
from bench.suite.config import RunConfig
from bench.suite.preemption import Preemption
from bench.training.probes import RunProbes
from bench.training.profiling import StepProfiler
from data.augment import DevicePreprocess

LOG_EVERY = 50  # steps between host reads of the running loss (progress bar, divergence check)


@dataclass
class Training:
    """The prepared pieces of one run that every step uses, built complete before the first step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step_schedule: bool
    criterion: torch.nn.Module
    loaders: dict[str, Any]  # split -> ffcv Loader (or the overhead benchmark's stand-in)
    counts: dict[str, int]
    train_preprocess: DevicePreprocess
    eval_preprocess: DevicePreprocess
    generator: torch.Generator
    probes: RunProbes  # the run's extra measurements (energy windows, device snapshots, first step)
    lr_warmup_steps: int = 0  # what the schedule resolved to
    compile_mode: str | None = None  # how the model is torch.compiled (None: eager)
    cuda_graphs: bool = False  # whether that compiled model replays CUDA graphs (each step is marked)
    profiler: StepProfiler | None = None
    preemption: Preemption | None = None  # a signal stops the loop at a step boundary

    @property
    def preempted(self) -> bool:
        """Whether every process agreed to stop at this step on a signal."""
        return self.preemption is not None and self.preemption.agreed is not None

    @property
    def eval_pad_to(self) -> int:
        """Evaluation pads its last, partial batch to the training batch, compiled or eager: a compiled model keeps one
        static shape, and cuDNN's autotuning of a new shape would land in the peak-memory window."""
        return self.loaders["train"].batch_size


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class StepSums:
    """Sums over consecutive training steps (an epoch, or the steps between two validations); they add up, so that
    a history row can cover every step since the previous validation."""

    loss_sum: float = 0.0  # over every sample of every process
    correct: float = 0.0
    seen: float = 0.0
    per_process: torch.Tensor | None = None  # (world, 3): timed images, timed seconds, seconds waiting for data
    seconds: float = 0.0  # wall time of the training (timed window or not)
    steps: int = 0

    def to_json(self) -> dict:
        """For a checkpoint: a resumed run's next history row still covers the steps trained before it."""
        per_process = None if self.per_process is None else self.per_process.tolist()
        return {**{name: getattr(self, name) for name in ("loss_sum", "correct", "seen", "seconds", "steps")},
                "per_process": per_process}

    @classmethod
    def from_json(cls, saved: dict) -> StepSums:
        per_process = saved.get("per_process")
        return cls(**{**saved, "per_process": None if per_process is None
                      else torch.tensor(per_process, dtype=torch.float64)})

    def __add__(self, other: StepSums) -> StepSums:
        per_process = other.per_process if self.per_process is None else self.per_process + other.per_process
        return StepSums(self.loss_sum + other.loss_sum, self.correct + other.correct, self.seen + other.seen,
                       per_process, self.seconds + other.seconds, self.steps + other.steps)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1.0, self.seen)

    @property
    def acc(self) -> float:
        return self.correct / max(1.0, self.seen)

    @property
    def images(self) -> int:
        """Images in the timed windows, all processes."""
        return int(self.per_process[:, 0].sum()) if self.per_process is not None else 0

    @property
    def images_per_s_per_process(self) -> list[float]:
        return rates(self.per_process) if self.per_process is not None else []

    @property
    def images_per_s(self) -> float:
        """Summed over processes."""
        return sum(self.images_per_s_per_process)

    @property
    def data_stall(self) -> float:
        """Share of each process's timed window spent waiting for data, averaged over processes."""
        if self.per_process is None:
            return 0.0
        return float((self.per_process[:, 2] / self.per_process[:, 1].clamp_min(1e-9)).mean())


@dataclass
class EvalResult:
    loss: float
    acc: float
    images_per_s: float
    seconds: float
    confusion: list[list[int]] | None = None  # [true class][predicted class] counts, when asked for
    top5_acc: float | None = None  # when asked for


def gather_rows(accelerator: Accelerator, values: list[float]) -> torch.Tensor:
    """One row of floats per process, as a (world, len(values)) CPU tensor."""
    local = torch.tensor([values], dtype=torch.float64, device=accelerator.device)
    return accelerator.gather(local).cpu()


def rates(per_process: torch.Tensor) -> list[float]:
    """Images/s of each process from gathered (images, seconds, ...) rows."""
    return [float(row[0] / row[1]) if row[1] > 0 else 0.0 for row in per_process]


def make_schedule(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    """(scheduler, per_step, warm-up steps): the recipe's schedule, stepped by the loop; warm-up is a share of the run
    capped at an epoch, so a 1-epoch run is not all warm-up and a 50-epoch run does not warm up for five."""
    recipe = cfg.recipe
    if recipe.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma), False, 0
    if recipe.schedule == "warmup-cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        warm = min(total - 1, round(recipe.warmup_fraction * total), int(recipe.warmup_max_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True, warm
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), False, 0


def train_steps(training: Training, accelerator: Accelerator, batches: Iterator, timer: WindowTimer,
                start_timing_at: int, step: int, limit: int | None = None, bar=None) -> tuple[StepSums, int, bool]:
    """Train on `batches` until they run out or `limit` steps are done; returns the stretch's sums, the
    step counter after it and whether the batches ran out. The timer's window opens once the step
    counter reaches `start_timing_at` (warm-up and profiled steps stay out of it)."""
    model, optimizer, scheduler = training.model, training.optimizer, training.scheduler
    model.train()
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, done, exhausted = 0, 0, False
    started = time.perf_counter()
    while limit is None or done < limit:
        if step >= start_timing_at and not timer.running:
            if step == start_timing_at:  # this session's window opens for the first time
                # Every rank starts together (rank 0 may have been exporting a profile), and peak memory counts
                # from here: compilation's and cuDNN autotuning's workspaces stay out of it.
                accelerator.wait_for_everyone()
                reset_peak_memory(device)
                training.probes.window_opened()
            timer.start()  # before the wait, so the window and the stall cover the same time
        try:
            with timer.waiting_for_data():
                images, labels, _ = next(batches)
        except StopIteration:
            exhausted = True
            break
        timer.count(labels.shape[0])
        if training.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed: reuse them
        inputs = training.train_preprocess(images, training.generator)
        outputs = model(inputs)
        loss = training.criterion(outputs, labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if training.per_step_schedule:
            scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (outputs.detach().argmax(dim=1) == labels).sum()
        seen += labels.shape[0]
        step += 1
        done += 1
        training.probes.step_done()
        if training.profiler is not None:
            training.profiler.step(step)
        if bar is not None:
            bar.update(1)
        if step % LOG_EVERY == 0:
            # Reduced, so that every rank sees the same value and stops together.
            running = accelerator.reduce(loss_sum.clone(), reduction="mean").item() / seen
            if not math.isfinite(running):
                raise RunDiverged(f"training loss became {running} at step {step}")
            if bar is not None and accelerator.is_main_process:
                elapsed = timer.elapsed()
                rate = timer.images / elapsed * accelerator.num_processes if elapsed > 0 else 0.0
                bar.set_postfix(loss=f"{running:.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:,.0f}")
        if training.preemption is not None and training.preemption.due(accelerator, step):
            break  # every process at the same step: the run saves its state here
    timer.stop()
    synchronize(device)
    seconds = time.perf_counter() - started
    sums = torch.stack([loss_sum, correct.to(torch.float64), torch.tensor(float(seen), device=device, dtype=torch.float64)])
    sums = accelerator.reduce(sums, reduction="sum").cpu()
    if not math.isfinite(float(sums[0])):
        raise RunDiverged(f"training loss became {float(sums[0])} in the steps ending at step {step}")
    per_process = gather_rows(accelerator, [timer.images, timer.seconds, timer.data_wait_s])
    return StepSums(float(sums[0]), float(sums[1]), float(sums[2]), per_process, seconds, done), step, exhausted


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, preprocess: Callable, num_samples: int, accelerator: Accelerator,
             num_classes: int | None = None, pad_to: int | None = None, cuda_graphs: bool = False,
             top5: bool = False) -> EvalResult:
    """Loss and accuracy over a split (with `num_classes` its confusion matrix, with `top5` its top-5 accuracy), each
    sample counted once across processes by writing results at its stored index (the loader's padding rewrites the
    same slot), merged by a max-reduce.

    With `pad_to` a partial last batch is padded with copies of its last sample, so that the model sees only training's
    batch shape (no recompilation, no cuDNN autotuning inside the peak-memory window); images/s count real images only."""
    model.eval()
    device = accelerator.device
    losses = torch.zeros(num_samples, device=device, dtype=torch.float32)
    correct = torch.zeros(num_samples, device=device, dtype=torch.float32)
    in_top5 = torch.zeros(num_samples, device=device, dtype=torch.float32)
    covered = torch.zeros(num_samples, device=device, dtype=torch.float32)
    truth = torch.zeros(num_samples, device=device, dtype=torch.int64)
    predicted = torch.zeros(num_samples, device=device, dtype=torch.int64)
    timer = WindowTimer(device)
    timer.start()
    for images, labels, indices in loader:
        timer.count(labels.shape[0])
        if pad_to and labels.shape[0] < pad_to:
            images, labels, indices = (torch.cat([t, t[-1:].expand(pad_to - t.shape[0], *t.shape[1:])])
                                       for t in (images, labels, indices))
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        outputs = model(preprocess(images)).float()
        losses[indices] = F.cross_entropy(outputs, labels, reduction="none")
        guesses = outputs.argmax(dim=1)
        correct[indices] = (guesses == labels).float()
        if top5:
            in_top5[indices] = (outputs.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float()
        covered[indices] = 1.0
        truth[indices], predicted[indices] = labels, guesses
    timer.stop()
    for tensor in (losses, correct, *([in_top5] if top5 else []), covered, truth, predicted):
        all_reduce_max_(tensor)
    missing = int(num_samples - covered.sum().item())
    if missing:
        raise RuntimeError(f"evaluation missed {missing} of {num_samples} samples")
    confusion = None
    if num_classes is not None:
        counts = torch.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
        confusion = counts.view(num_classes, num_classes).tolist()
    images_per_s = sum(rates(gather_rows(accelerator, [timer.images, timer.seconds])))
    return EvalResult(loss=losses.mean().item(), acc=correct.mean().item(), images_per_s=images_per_s,
                      seconds=timer.seconds, confusion=confusion, top5_acc=in_top5.mean().item() if top5 else None)
