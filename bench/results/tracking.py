"""`--log-with`: every run in the experiment trackers users already watch, through Accelerate's integrations: its
configuration as hyper-parameters, each history row at its step, the final metrics at the end.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

PROJECT = "deepnets-bench"
ALL = "all"
TRACKERS = tuple(name for name in LoggerType.list() if name != ALL)  # what this Accelerate integrates


def tracker_error(requested: list[str]) -> str | None:
    """Why `--log-with` cannot be honoured here, or None."""
    available = {LoggerType(tracker).value for tracker in get_available_trackers()}
    if ALL in requested:
        return None if available else (f"--log-with all: no tracker package is installed; expected one of "
                                       f"{', '.join(TRACKERS)} (pip install 'deepnets-bench[trackers]')")
    missing = [name for name in requested if name not in available]
    if missing:
        return (f"--log-with {missing[0]}: the {missing[0]} package is not installed; "
                f"pip install 'deepnets-bench[{missing[0]}]'")
    return None


def tracker_dir(results_dir: Path) -> Path:
    return results_dir / "trackers"


def hyperparameters(config: object) -> dict[str, object]:
    """A run configuration as flat scalars (trackers such as TensorBoard's hparams accept nothing else)."""

    def flat(value: object, prefix: str) -> dict[str, object]:
        if isinstance(value, dict):
            return {name: leaf for key, inner in value.items() for name, leaf in flat(inner, f"{prefix}{key}.").items()}
        return {prefix[:-1]: value if isinstance(value, (bool, int, float, str)) else str(value)}  # None, tuples

    return flat(dataclasses.asdict(config), "")


def start(accelerator: Accelerator, config, run_id: str, results_dir: Path) -> None:
    """Open this run in every tracker of the accelerator (no-op without --log-with)."""
    if not accelerator.log_with:
        return
    accelerator.project_configuration.logging_dir = str(tracker_dir(results_dir) / run_id)
    accelerator.init_trackers(PROJECT, config=hyperparameters(config), init_kwargs={
        "wandb": {"name": run_id}, "mlflow": {"run_name": run_id}, "clearml": {"task_name": run_id}})


def log_row(accelerator: Accelerator, row: dict) -> None:
    """One history row, at its training step: numbers only, grouped as the report groups them."""
    values = {f"{'val' if key.startswith('val_') else 'train'}/{key}": value for key, value in row.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
    accelerator.log(values, step=row["step"])


def log_final(accelerator: Accelerator, metrics: dict, step: int) -> None:
    accelerator.log({f"final/{key}": float(value) for key, value in metrics.items()
                     if isinstance(value, (int, float))}, step=step)


def finish(accelerator: Accelerator) -> None:
    """Close this run in every tracker, so that the suite's next run opens its own."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
