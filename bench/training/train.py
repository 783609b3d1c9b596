"""One training run under Accelerate, from its configuration to its record, readable top to bottom: `train_run` calls
`build_training`, `restore`, `run_epochs` (`run_epoch`, `validate`), tests once and `summarise`s.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch._dynamo.utils import counters as dynamo_counters
from tqdm.auto import tqdm

from bench.measuring.confusion import INLINE_MAX_CLASSES, top_confusions
from bench.measuring.cost import cost_metrics
from bench.measuring.device import device_name, peak_tflops, uses_cuda_graphs
from bench.measuring.environment import environment
from bench.measuring.measure import WindowTimer, is_oom, peak_memory_bytes, reset_peak_memory, time_to_target
from bench.measuring.metrics import TOP5_MIN_CLASSES, history_row, run_metrics
from bench.results import records, tracking
from bench.results.records import CheckpointError
from bench.results.schema import RunRecord
from bench.suite.config import RunConfig, RunContext
from bench.suite.preemption import Preempted
from bench.training.loop import (EvalResult, RunDiverged, StepSums, Training, evaluate, gather_rows, make_schedule,
                                 train_steps)
from bench.training.probes import RunProbes
from bench.training.profiling import StepProfiler
from bench.training.runtime import build_model_and_optimizer, print_main, release, unsupported
from common.files import full_disk_is_one_line
from data.augment import DevicePreprocess
from data.datasets import get_spec
from data.encode import prepare_dataset
from data.errors import DataError
from data.loaders import set_loader_epoch, shared_loader
from models.facts import model_facts


@dataclass
class Progress:
    """What a run has done so far; saved with every checkpoint, so that a resumed run carries its sums on."""

    epoch: int = 0  # epochs completed
    step: int = 0  # training steps completed
    history: list[dict] = field(default_factory=list)
    timed_images: int = 0  # timed-window sums over epochs: images, seconds at the global rate,
    timed_seconds: float = 0.0  # and seconds stalled on data
    stall_seconds: float = 0.0
    wall_time_s: float = 0.0  # the run's wall time up to the last checkpoint
    checkpoint_s: float = 0.0  # of which spent writing checkpoints
    # Trained since the last validation (with --eval-every, an epoch can end between two), and the LR then.
    pending: StepSums = field(default_factory=StepSums)
    pending_lr: float | None = None
    epoch_step: int = 0  # steps done in the epoch in progress (a state saved mid-epoch on a signal)
    requeues: int = 0  # times the run stopped on a signal and was resumed
    requeue_lost_s: float = 0.0  # wall seconds from each signal to the first step after its resume
    preempted_at: float | None = None  # time.time() of the signal the saved state stopped on


def train_run(cfg: RunConfig, context: RunContext, accelerator: Accelerator) -> RunRecord:
    """Train and measure one configuration; returns its record (the caller writes it). Diverging, running out of
    memory or communication settings the device cannot run (`unsupported`) are results; any other exception propagates,
    Preempted among them (the state at that step is saved)."""
    started = time.time()
    record = describe_run(cfg, context, accelerator, started)
    if reason := unsupported(cfg.communication, accelerator.device):
        return replace(record, status="unsupported", error=reason, finished_at=now())
    progress, metrics = Progress(), {}
    graphs_before = dynamo_counters["stats"]["unique_graphs"]
    probes = RunProbes(accelerator, started)
    try:
        with probes.track():
            training = build_training(cfg, context, accelerator, probes)
            tracking.start(accelerator, cfg, cfg.run_id, context.results_dir)
            spec = get_spec(cfg.dataset)
            facts = model_facts(cfg.model, spec.channels, num_classes=spec.num_classes)
            record = replace(record, facts=asdict(facts))  # a diverged or out-of-memory record keeps them too
            saved = restore(cfg, context.results_dir, accelerator, training) if context.resume else None
            if saved is None and accelerator.is_local_main_process:  # every machine: its own files, unshared
                records.remove_checkpoints(context.results_dir, cfg.run_id)
            progress = saved or Progress()
            wall_before = progress.wall_time_s
            with probes.training():
                run_epochs(cfg, context, accelerator, training, progress, started)
            test = evaluate(training.model, training.loaders["test"], training.eval_preprocess,
                            training.counts["test"], accelerator, num_classes=spec.num_classes,
                            pad_to=training.eval_pad_to, cuda_graphs=training.cuda_graphs,
                            top5=spec.num_classes >= TOP5_MIN_CLASSES)
        allocated, reserved = peak_memory_bytes(accelerator.device)
        memory = gather_rows(accelerator, [allocated, reserved]).max(dim=0).values
        wall_time_s, graphs = wall_before + time.time() - started, dynamo_counters["stats"]["unique_graphs"] - graphs_before
        measured = probes.measured(cfg, context, training, progress.timed_images, progress.history,
                                   resumed=saved is not None)
        metrics = summarise(cfg, context, accelerator, training, progress, test, facts.train_gflops, int(memory[0]),
                            int(memory[1]), wall_time_s=wall_time_s, compiled_graphs=graphs,
                            measured=measured.metrics)
        tracking.log_final(accelerator, metrics, step=progress.step)
        record = replace(record, device_state=measured.device_state, inference=measured.inference,
                         comm_probe=measured.comm_probe, test_top_confusions=top_confusions(test.confusion),
                         test_confusion=test.confusion if spec.num_classes <= INLINE_MAX_CLASSES else None,
                         test_per_class_acc=[row[i] / max(1, sum(row)) for i, row in enumerate(test.confusion)])
        status, error = "finished", None
    except RunDiverged as caught:
        status, error = "diverged", str(caught)
    except (RuntimeError, MemoryError) as caught:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(caught):
            raise
        status, error = "oom", str(caught).splitlines()[0]
    finally:
        tracking.finish(accelerator)
        release(accelerator, compiled=bool(cfg.compile_mode))
    # Finished, diverged and OOM runs are final (--resume skips them): their checkpoints are done with.
    if not context.keep_checkpoints:
        accelerator.wait_for_everyone()
        if accelerator.is_local_main_process:  # every machine's random states too, when the folder is not shared
            records.remove_checkpoints(context.results_dir, cfg.run_id)
    return replace(record, status=status, error=error, history=progress.history, metrics=metrics, finished_at=now())


def describe_run(cfg: RunConfig, context: RunContext, accelerator: Accelerator, started: float) -> RunRecord:
    """A run's record before it has an outcome (a failure, until the run says otherwise): what ran, on what, when."""
    return RunRecord(run_id=cfg.run_id, status="failed", config=cfg.to_json(), settings=context.settings_json(),
                     env=environment(accelerator), class_names=list(get_spec(cfg.dataset).class_names),
                     started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)))


def failed_record(cfg: RunConfig, context: RunContext, accelerator: Accelerator, started: float,
                  error: BaseException) -> RunRecord:
    """The record of a run that raised `error`: its description, the error and its traceback."""
    return replace(describe_run(cfg, context, accelerator, started), error=repr(error), traceback=traceback.format_exc(),
                   finished_at=now())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def build_training(cfg: RunConfig, context: RunContext, accelerator: Accelerator, probes: RunProbes) -> Training:
    """Data (encoded once per cache, main process first), loaders, model, optimizer, schedule, preprocessing, and what
    watches the steps (probes, the profiler, the signals)."""
    device = accelerator.device
    set_seed(cfg.seed, device_specific=True)  # rank 0 keeps the seed; DDP copies its weights to the others
    with accelerator.main_process_first():
        encoded = prepare_dataset(cfg.dataset, data_dir=context.data_dir, cache_dir=context.cache_dir,
                                  synthetic=cfg.synthetic,
                                  synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test)
    spec = encoded.spec
    loaders = {
        split: shared_loader(encoded.paths[split], batch_size=cfg.batch_size, train=(split == "train"), device=device,
                             seed=cfg.seed, distributed=accelerator.num_processes > 1, num_workers=context.num_workers,
                             order=cfg.loader_order)
        for split in ("train", "val", "test")
    }
    if len(loaders["train"]) == 0:
        raise DataError(f"--batch-size {cfg.batch_size}: no full training batch from {encoded.counts['train']} images "
                        f"over {accelerator.num_processes} process(es); expected a smaller batch size")
    recipe = cfg.recipe
    if accelerator.scaler is not None:  # fp16: a fresh loss scale per run, not the previous run's
        accelerator.scaler = torch.amp.GradScaler(device.type)
    model, optimizer = build_model_and_optimizer(
        cfg.model, spec.channels, spec.num_classes, device, channels_last=cfg.channels_last,
        lr=cfg.peak_lr, momentum=recipe.momentum,
        nesterov=recipe.nesterov, weight_decay=recipe.weight_decay, compile_mode=cfg.compile_mode,
        accelerator=accelerator, sync_bn=cfg.communication.sync_bn)
    scheduler, per_step, warmup = make_schedule(optimizer, cfg, len(loaders["train"]))
    return Training(
        model=model, optimizer=optimizer, scheduler=scheduler, per_step_schedule=per_step,
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing), loaders=loaders,
        counts=encoded.counts,
        train_preprocess=DevicePreprocess(spec.mean, spec.std, spec.augmentation(recipe.augment), cfg.channels_last),
        eval_preprocess=DevicePreprocess(spec.mean, spec.std, None, cfg.channels_last),
        generator=torch.Generator(device=device), probes=probes, lr_warmup_steps=warmup, compile_mode=cfg.compile_mode,
        cuda_graphs=uses_cuda_graphs(cfg.compile_mode, device), preemption=context.preemption,
        profiler=StepProfiler(context.results_dir / "profiles" / cfg.run_id, device, context.warmup_steps)
        if context.profile and accelerator.is_main_process else None,
    )


def restore(cfg: RunConfig, results_dir: Path, accelerator: Accelerator, training: Training) -> Progress | None:
    """Load the last saved state of an unfinished run (model, optimizer, scaler, RNGs, schedule, and where in its
    epoch it stopped); None when there is none. A state this version cannot read is a CheckpointError, never a
    silent start from zero."""
    saved = records.read_progress(results_dir, cfg.run_id)
    if saved is None:
        return None
    folder = records.checkpoint_dir(results_dir, cfg.run_id)
    state = folder / saved.pop("state")
    try:
        progress = Progress(**{**saved, "pending": StepSums.from_json(saved.get("pending", {}))})
    except TypeError as error:
        raise CheckpointError(f"{folder / 'progress.json'}: written by another version of deepnets-bench ({error}); "
                              f"resume it with that version, or remove {folder} to start {cfg.run_id} over") from None
    accelerator.load_state(str(state))
    training.scheduler.load_state_dict(torch.load(state / "lr_scheduler.pt", weights_only=True))
    augment_rng = state / f"augment_rng_{accelerator.process_index}.pt"
    if augment_rng.exists():  # mid-epoch: the augmentations go on as if never stopped
        training.generator.set_state(torch.load(augment_rng, weights_only=True))
    within = f" and {progress.epoch_step} step(s) of epoch {progress.epoch + 1} (step {progress.step})" \
        if progress.epoch_step else ""
    print_main(accelerator, f"resuming {cfg.run_id} after epoch {progress.epoch}{within}")
    return progress


def save_checkpoint(accelerator: Accelerator, results_dir: Path, run_id: str, training: Training,
                    progress: Progress) -> None:
    """Save the state after a completed epoch, or mid-epoch at a step (preemption); progress.json is renamed into
    place last, so it always names a complete state folder, and older folders are removed only after that."""
    folder = records.checkpoint_dir(results_dir, run_id)
    state_name = f"epoch-{progress.epoch:04d}" + (f"-step-{progress.step:08d}" if progress.epoch_step else "")
    # A full disk leaves the last complete state named by progress.json, and no part of this one.
    with full_disk_is_one_line(folder, cleanup=folder / state_name):
        accelerator.save_state(str(folder / state_name))
        if accelerator.is_main_process:
            torch.save(training.scheduler.state_dict(), folder / state_name / "lr_scheduler.pt")
        if progress.epoch_step:  # each rank's augmentation stream, part-way through the epoch
            accelerator.wait_for_everyone()  # the folder exists
            torch.save(training.generator.get_state(), folder / state_name / f"augment_rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()  # every rank's part of the state is on disk before progress.json names it
    if accelerator.is_main_process:
        records.write_progress(results_dir, run_id, {"state": state_name, **asdict(progress),
                                                     "pending": progress.pending.to_json()})
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:  # every machine's own random states too, when the folder is not shared
        records.prune_states(folder, keep=state_name)


def run_epochs(cfg: RunConfig, context: RunContext, accelerator: Accelerator, training: Training, progress: Progress,
               started: float) -> None:
    """Train the remaining epochs, validating after each (or every `eval_every` steps), until the last
    epoch or, with `stop_at_target`, the first validation at the target; checkpoint when one is due,
    and at the end when the final state is to be kept (--keep-checkpoints)."""
    wall_before = progress.wall_time_s
    reset_peak_memory(accelerator.device, drop_cached=True)  # the previous run's cached blocks are not ours
    start_timing_at = context.warmup_steps + (StepProfiler.steps if context.profile else 0)  # the same on every process
    session_step, last_saved = 0, time.time()  # this session's steps: warm-up and profiling restart on resume

    def elapsed() -> float:
        return wall_before + time.time() - started

    try:
        for epoch in range(progress.epoch, cfg.epochs):
            session_step, reached = run_epoch(cfg, accelerator, training, progress, epoch, session_step,
                                              start_timing_at, elapsed)
            progress.wall_time_s = elapsed()
            if reached and cfg.stop_at_target:
                break
            if training.preempted and progress.epoch < cfg.epochs:  # after the last epoch the record is a few seconds away
                progress.preempted_at, progress.requeues = training.preemption.received_at, progress.requeues + 1
                save_checkpoint(accelerator, context.results_dir, cfg.run_id, training, progress)
                raise Preempted(training.preemption.agreed, cfg.run_id, progress.step)
            # Rank 0's clock decides, so that every rank enters save_state together.
            (due,) = broadcast_object_list([time.time() - last_saved >= context.checkpoint_minutes * 60],
                                           from_process=0)
            if due and epoch + 1 < cfg.epochs:  # after the last epoch the record follows at once
                saving = time.time()
                save_checkpoint(accelerator, context.results_dir, cfg.run_id, training, progress)
                progress.checkpoint_s += time.time() - saving  # a resumed run's sum misses only its last save
                last_saved = time.time()
        if context.keep_checkpoints:
            save_checkpoint(accelerator, context.results_dir, cfg.run_id, training, progress)
    finally:
        if training.profiler is not None:
            training.profiler.close()


def run_epoch(cfg: RunConfig, accelerator: Accelerator, training: Training, progress: Progress, epoch: int,
              session_step: int, start_timing_at: int, elapsed) -> tuple[int, bool]:
    """Train one epoch, validating at its end (or every `eval_every` steps, and at the end of the last
    epoch); each validation adds a history row to `progress`. Returns the session's step counter and
    whether validation reached the target (the epoch stops there when `stop_at_target`)."""
    loader = training.loaders["train"]
    set_loader_epoch(loader, epoch)
    # Augmentation randomness per (seed, epoch, rank): reproducible, and the same after a resume.
    if not progress.epoch_step:  # (resumed mid-epoch, the generator's saved state goes on)
        training.generator.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + accelerator.process_index)
    # Main process only, and only on a terminal (disable=None): logs get a line per validation instead.
    bar = tqdm(total=len(loader), initial=progress.epoch_step, desc=f"{cfg.model} {cfg.dataset} {epoch + 1}/{cfg.epochs}",
               leave=False, disable=None if accelerator.is_main_process else True, mininterval=2.0, dynamic_ncols=True)
    batches, reached, exhausted = iter(loader), False, False
    for _ in range(progress.epoch_step):  # resumed mid-epoch: this epoch's order, past the batches trained on
        next(batches)
    if progress.pending_lr is None:
        progress.pending_lr = training.optimizer.param_groups[0]["lr"]
    try:
        while True:
            limit = cfg.eval_every - progress.step % cfg.eval_every if cfg.eval_every else None
            trained, session_step, exhausted = train_steps(
                training, accelerator, batches, WindowTimer(accelerator.device, energy=training.probes.energy),
                start_timing_at, session_step, limit=limit, bar=bar)
            progress.pending, progress.step = progress.pending + trained, progress.step + trained.steps
            progress.epoch_step += trained.steps
            first_step_at = training.probes.first_step_at
            if progress.preempted_at is not None and first_step_at is not None:  # the first step since the signal
                progress.requeue_lost_s += first_step_at - progress.preempted_at
                progress.preempted_at = None
            if trained.images:
                progress.timed_images += trained.images
                progress.timed_seconds += trained.images / trained.images_per_s
                progress.stall_seconds += trained.data_stall * trained.images / trained.images_per_s
            if exhausted and not training.per_step_schedule:
                training.scheduler.step()
            validate_now = (trained.steps and progress.step % cfg.eval_every == 0) if cfg.eval_every else exhausted
            if validate_now or (exhausted and epoch + 1 == cfg.epochs and progress.pending.steps):
                reached = validate(cfg, accelerator, training, progress, len(loader), elapsed)
                progress.pending, progress.pending_lr = StepSums(), training.optimizer.param_groups[0]["lr"]
                if reached and cfg.stop_at_target:
                    break
            if exhausted or training.preempted:
                break
    finally:
        close = getattr(batches, "close", None)  # ffcv's iterator thread holds pinned and device buffers
        if close is not None:
            close()
        bar.close()
    if exhausted and not (reached and cfg.stop_at_target):
        progress.epoch, progress.epoch_step = epoch + 1, 0
    return session_step, reached


def validate(cfg: RunConfig, accelerator: Accelerator, training: Training, progress: Progress,
             steps_per_epoch: int, elapsed) -> bool:
    """Score the validation split, add the history row for the steps since the last one (`progress.pending`),
    and say whether the target is reached."""
    trained, lr = progress.pending, progress.pending_lr
    val = evaluate(training.model, training.loaders["val"], training.eval_preprocess, training.counts["val"],
                   accelerator, pad_to=training.eval_pad_to, cuda_graphs=training.cuda_graphs)
    training.probes.validated()
    epochs = progress.step / steps_per_epoch
    progress.history.append(row := history_row(
        epoch=epochs, step=progress.step, train_images=int(trained.seen), train_loss=trained.loss, train_acc=trained.acc, val_loss=val.loss,
        val_acc=val.acc, train_time_s=trained.seconds, eval_time_s=val.seconds, elapsed_s=elapsed(),
        train_images_per_s=trained.images_per_s, train_images_per_s_per_process=trained.images_per_s_per_process,
        eval_images_per_s=val.images_per_s, data_stall=trained.data_stall, lr=lr,
    ))
    tracking.log_row(accelerator, row)
    print_main(accelerator, f"{cfg.model} {cfg.dataset} epoch {epochs:.2f}/{cfg.epochs}: train loss {trained.loss:.4f} "
                      f"acc {trained.acc:.4f} | val loss {val.loss:.4f} acc {val.acc:.4f} | "
                      f"{trained.images_per_s:,.0f} img/s, stall {trained.data_stall:.1%}")
    return cfg.target_accuracy is not None and val.acc >= cfg.target_accuracy


def summarise(cfg: RunConfig, context: RunContext, accelerator: Accelerator, training: Training, progress: Progress,
              test: EvalResult, train_gflops: float, peak_allocated: int, peak_reserved: int, wall_time_s: float,
              compiled_graphs: int, measured: dict) -> dict:
    """The run's metrics (each a declared metric) from its history and timed sums, with what its
    probes `measured` (cold start, energy, device state, inference) and its cost."""
    history = progress.history
    best = max(history, key=lambda row: row["val_acc"])
    timed_seconds = progress.timed_seconds
    images_per_s = progress.timed_images / timed_seconds if timed_seconds > 0 else 0.0
    peak, peak_source = peak_tflops(accelerator.device, cfg.precision)
    achieved = train_gflops * images_per_s / 1e3  # TFLOP/s
    target = time_to_target(history, cfg.target_accuracy)
    eval_rates = [row["eval_images_per_s"] for row in history[1:]] or [history[0]["eval_images_per_s"]]
    train_seconds = sum(row["train_time_s"] for row in history)
    epochs = history[-1]["epoch"]
    return run_metrics(
        epochs_completed=epochs,
        train_loss=history[-1]["train_loss"], train_acc=history[-1]["train_acc"],
        val_loss=history[-1]["val_loss"], val_acc=history[-1]["val_acc"],
        best_val_acc=best["val_acc"], best_val_epoch=best["epoch"], test_loss=test.loss, test_acc=test.acc,
        test_top5_acc=test.top5_acc,
        train_images_per_s=images_per_s,
        eval_images_per_s=(sum(eval_rates) + test.images_per_s) / (len(eval_rates) + 1),
        train_time_s=train_seconds, eval_time_s=sum(row["eval_time_s"] for row in history) + test.seconds,
        epoch_time_s=train_seconds / epochs, wall_time_s=wall_time_s, checkpoint_s=progress.checkpoint_s,
        requeues=progress.requeues, requeue_lost_s=progress.requeue_lost_s,
        data_stall=progress.stall_seconds / timed_seconds if timed_seconds > 0 else 0.0,
        target_accuracy=cfg.target_accuracy,
        reached_target=None if cfg.target_accuracy is None else target.seconds is not None,
        time_to_target_s=target.seconds, time_to_target_wall_s=target.wall_seconds, epochs_to_target=target.epochs,
        achieved_tflops=achieved, peak_tflops=peak and peak * accelerator.num_processes, peak_tflops_source=peak_source,
        mfu=achieved / (peak * accelerator.num_processes) if peak else None,
        peak_mem_allocated_bytes=peak_allocated, peak_mem_reserved_bytes=peak_reserved,
        peak_lr=training.optimizer.param_groups[0]["initial_lr"], lr_warmup_steps=training.lr_warmup_steps,
        compiled_graphs=compiled_graphs if cfg.compile_mode else None,
        **cost_metrics(context.pricing.for_device(device_name(accelerator.device)), accelerator.num_processes,
                       wall_time_s, target.wall_seconds),
        **measured,
    )
