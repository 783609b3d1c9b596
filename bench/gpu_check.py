"""The Python half of scripts/gpu-check.sh: what this machine offers (`probe`) and the one-page SUMMARY.md (`summary`).

`probe` prints KEY=VALUE lines for the script (ffcv, CUDA, the device and its compute/MIG modes, the datasets
--data-dir holds, the wheels to install); `summary` reads the run folder the script left and writes SUMMARY.md.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from accelerate import Accelerator

from bench.measuring.device import device_name
from bench.measuring.environment import environment, package_version, use_cpu
from bench.measuring.machine import gpu_state
from bench.measuring.nvml import NvmlDevice, for_device
from bench.reporting.plots import slug
from bench.reporting.render import markdown_table
from bench.reporting.tables import accuracy_table, run_rows, speed_table, sweep_table
from bench.results.records import load_records, load_sweeps
from bench.suite.config import recipe_batch
from bench.suite.recipes import PRESETS, RECIPES
from common.cli import OneLineParser, existing_folder, positive_int
from common.files import atomic_write
from data.datasets import get_spec
from models import study_datasets

PROG = "python -m bench.gpu_check"
# bench/overhead.py's closing line: "<model> <dataset> batch N <precision> channels_last=B on <device>: harness
# X img/s, bare Y img/s, ratio R (target >= 0.97)".
OVERHEAD_LINE = re.compile(r"^(?P<model>\S+) (?P<dataset>\S+) batch (?P<batch>\d+) (?P<precision>\S+) "
                           r"channels_last=\S+ on .+: harness (?P<harness>[\d,.]+) img/s, "
                           r"bare (?P<bare>[\d,.]+) img/s, ratio (?P<ratio>[\d.]+)", re.M)
OVERHEAD_TARGET = 0.97
SWEEP_SKIP_LINE = re.compile(r"^bench/speed\.py: time budget of .*; skipped: (?P<keys>.*)$", re.M)


# ----- probe ---------------------------------------------------------------------------------------------------

def wheels_to_install(folder: Path | None) -> list[str]:
    """ffcv's wheel, and each other wheel in `folder` whose distribution this Python lacks: what the machine
    has stays its own (a copy earlier on PYTHONPATH would shadow it, torch's numpy say)."""
    wheels = sorted(folder.glob("*.whl")) if folder is not None and folder.is_dir() else []
    return [wheel.name for wheel in wheels
            if wheel.name.startswith("ffcv-") or package_version(wheel.name.split("-")[0]) is None]


def gpu_modes(device: NvmlDevice) -> str:
    """One line: the GPU's compute mode and MIG as NVML reports them (an EXCLUSIVE_PROCESS GPU admits one CUDA
    context at a time; a MIG slice has no energy, power or clocks of its own), and what NVML did not answer."""
    state = gpu_state(device)
    if "mig" not in state:  # no NVML at all
        return f"compute mode and MIG unknown: {state['note']}"
    line = (f"compute mode {state['compute_mode'] or 'unknown'}, MIG mode {state['mig_mode'] or 'unknown'} "
            f"({'this device is a MIG slice' if state['mig'] else 'a whole GPU'})")
    return line + (f"; NVML did not answer: {state['note']}" if "note" in state else "")


def probe(data_dir: Path | None, wheels: Path | None) -> list[str]:
    """KEY=VALUE lines; values are single lines (the script splits each at its first '=')."""
    try:
        import ffcv  # noqa: F401  -- the import itself is the check (on Python 3.12 it also needs setuptools)
        ffcv_status = "ok"
    except Exception as error:  # a broken install fails in any way; the script needs the one line
        ffcv_status = f"missing ({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    cuda = torch.cuda.is_available()
    name = device_name(torch.device("cuda" if cuda else "cpu"))
    fast = PRESETS["fast"]
    present = []
    for dataset in study_datasets() if data_dir is not None and data_dir.is_dir() else ():
        spec = get_spec(dataset)
        if spec.source.find(data_dir, spec):
            present.append(dataset)
    folder_name = slug(name)[:40].strip("-")  # 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'
    return [f"ffcv={ffcv_status}", f"cuda={'yes' if cuda else 'no'}", f"device={name}", f"slug={folder_name}",
            f"gpu_modes={gpu_modes(for_device(torch.device('cuda', 0))) if cuda else ''}",
            f"fast_batch={fast.batch_size or recipe_batch(RECIPES[fast.recipe], num_processes=1)}",
            f"datasets={' '.join(present)}", f"mnist_files={get_spec('mnist').source.place_hint()}",
            f"wheels={' '.join(wheels_to_install(wheels))}"]


# ----- summary -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    status: str  # ok, failed (exit N), stopped: budget, skipped: ...
    seconds: int
    limit: int  # the seconds it was allowed (its cap, or what the budget left)
    command: str


def read_steps(run_dir: Path) -> list[Step]:
    """steps.tsv, one `name<TAB>status<TAB>seconds<TAB>limit<TAB>command` line per step, as the script wrote it."""
    path = run_dir / "steps.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return [Step(name, status, int(seconds), int(limit), command)
            for name, status, seconds, limit, command in (line.split("\t", 4) for line in lines)]


def step_log(run_dir: Path, name: str) -> str:
    path = run_dir / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def machine_lines(env: dict, cpu: bool) -> list[str]:
    versions = ", ".join(f"{name} {env[name]}" for name in ("python", "torch", "cuda", "cudnn", "torchvision",
                                                            "accelerate", "ffcv", "numpy", "numba"))
    lines = [f"- device: {env['device_name']} ({env['visible_gpus']} visible GPU(s)), host {env['hostname']}",
             f"- versions: {versions}", f"- code: git commit {env['git_commit']}, source digest {env['source_digest']} "
             "(`python -m bench.results.provenance find DIGEST` in a clone names its commit)"]
    if cpu:
        lines.append("- **CPU rehearsal** (`--cpu`): tiny sizes and synthetic data; it checks the command lines, "
                     "its numbers mean nothing.")
    return lines


def counted(names: list[str], what: str) -> str:
    return f"{len(names)} {what}" + (f" ({', '.join(names)})" if names else "")


def steps_lines(steps: list[Step], budget_s: int) -> list[str]:
    table = pd.DataFrame([vars(step) for step in steps]).reindex(columns=["name", "status", "seconds", "limit"])
    ok = [step.name for step in steps if step.status == "ok"]
    failed = [step.name for step in steps if step.status.startswith("failed")]
    cut = [step.name for step in steps if step.status.startswith(("skipped", "stopped"))]
    return [f"Budget {budget_s} s; the steps took {table['seconds'].sum()} s: {len(ok)} ok, "
            f"{counted(failed, 'failed')}, {counted(cut, 'skipped or stopped by the budget')}.", "",
            table.to_markdown(index=False) if steps else "_(no steps ran)_"]


def overhead_lines(run_dir: Path, steps: list[Step]) -> list[str]:
    rows = []
    for step in steps:
        if step.name.startswith("overhead-"):
            found = OVERHEAD_LINE.search(step_log(run_dir, step.name))
            if found:
                ratio = float(found["ratio"])
                rows.append({"model": found["model"], "batch": found["batch"], "precision": found["precision"],
                             "harness img/s": found["harness"], "bare img/s": found["bare"], "ratio": found["ratio"],
                             f">= {OVERHEAD_TARGET}": "yes" if ratio >= OVERHEAD_TARGET else "**no**"})
            else:
                rows.append({"model": step.name.removeprefix("overhead-"), "ratio": f"no result ({step.status})"})
    if not rows:
        return ["_(not run)_"]
    # As bench.overhead printed them (disable_numparse: tabulate would reformat the numbers).
    return [pd.DataFrame(rows).fillna("").to_markdown(index=False, disable_numparse=True)]


def sweep_lines(run_dir: Path, steps: list[Step]) -> list[str]:
    records, _ = load_sweeps(run_dir)
    skipped = sum(len(found["keys"].split(", ")) for step in steps if step.name.startswith("sweep-")
                  for found in SWEEP_SKIP_LINE.finditer(step_log(run_dir, step.name)))
    if not records:
        return [f"_(no sweep points measured; {skipped} skipped by the sweep's budget)_"]
    table = sweep_table(records)
    ok = table[(table["status"] == "ok") & (table["mode"] == "train")]
    rows = []
    for model, group in ok.groupby("model", sort=False):
        best = group.loc[group["images_per_s"].idxmax()]
        eager, compiled = group[group["compile"] == "off"], group[group["compile"] != "off"]
        rows.append({**best[["model", "images_per_s", "precision", "compile", "batch_size", "mfu"]],
                     "best_eager_images_per_s": eager["images_per_s"].max(),
                     "best_compiled_images_per_s": compiled["images_per_s"].max()})
    best = pd.DataFrame(rows, columns=["model", "images_per_s", "precision", "compile", "batch_size", "mfu",
                                       "best_eager_images_per_s", "best_compiled_images_per_s"])
    oom = int((table["status"] == "oom").sum())
    return [f"{len(table)} point(s) measured ({oom} out of memory), {skipped} skipped by the sweep's budget. "
            "Best training img/s per model, and where it was reached (synthetic device-resident batches, "
            "channels_last):", "", markdown_table(best)]


def throughput_lines(run_dir: Path, steps: list[Step]) -> list[str]:
    """The table data.throughput printed, as it printed it (it writes no file)."""
    step = next((step for step in steps if step.name == "throughput"), None)
    if step is None:
        return ["_(not run)_"]
    log = step_log(run_dir, "throughput").splitlines()
    start = next((number for number, line in enumerate(log) if line.startswith("images/s reaching")), None)
    if start is None:
        return [f"_(no result: {step.status}; see logs/throughput.log)_"]
    table = [line for line in log[start + 1:] if line.startswith("|")]
    return [log[start] + ":", "", *table]


def suite_lines(run_dir: Path, steps: list[Step]) -> list[str]:
    """What the check's suite ran (its command line: it is smaller than the `fast` preset, to fit its share of
    the budget), then its headline."""
    step = next((step for step in steps if step.name == "suite"), None)
    ran = [f"Ran `{step.command.split(' bench/run.py ', 1)[-1]}` ({step.status}, {step.seconds} s).", ""] if step else []
    records, _ = load_records(run_dir)
    if not records:
        return [*ran, "_(no run records)_"]
    runs = run_rows(records)
    keys = ["data_source", "dataset", "model"]
    accuracy = accuracy_table(runs).reindex(columns=[*keys, "test_acc", "study_acc", "diff_pp", "train_time_s"])
    speed = speed_table(runs).reindex(columns=[*keys, "time_to_target_s", "reached", "train_images_per_s", "mfu",
                                               "peak_mem_allocated_bytes"])
    headline = accuracy.merge(speed, on=keys, how="outer")
    finished = int((runs["status"] == "finished").sum())
    lines = [*ran, f"{finished} of {len(runs)} run(s) finished.", "", markdown_table(headline)]
    unfinished = runs[runs["status"] != "finished"]
    for row in unfinished.itertuples():
        error = str(row.error).splitlines()[0] if row.error else ""
        lines += ["", f"- {row.status}: {row.model} on {row.dataset}" + (f" ({error})" if error else "")]
    return lines


def summary_markdown(run_dir: Path, budget_s: int, cpu: bool, env: dict) -> str:
    """SUMMARY.md's text; `env` is bench.measuring.environment's description of this machine."""
    steps = read_steps(run_dir)
    sections = {
        "Machine": machine_lines(env, cpu),
        "Steps": steps_lines(steps, budget_s),
        "Harness overhead (bench.overhead: harness vs bare loop, same device-resident batch)": overhead_lines(run_dir, steps),
        "Speed sweep (bench.speed)": sweep_lines(run_dir, steps),
        "Input pipeline (data.throughput)": throughput_lines(run_dir, steps),
        "Suite (bench/run.py --preset fast, shortened): accuracy, time and MFU": suite_lines(run_dir, steps),
    }
    lines = [f"# GPU check: {run_dir.name}", "", f"Written {time.strftime('%Y-%m-%d %H:%M %Z')}. Every number below, "
             f"and the rest (REPORT.md, tables/, plots/, runs/, speed/, logs/, gpu-check.log), is in the run folder "
             f"`{run_dir.name}`, packed as `{run_dir.name}.tar.gz`.", ""]
    for title, body in sections.items():
        lines += [f"## {title}", "", *body, ""]
    return "\n".join(lines)


# ----- command line --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    probe_parser = commands.add_parser("probe", help="KEY=VALUE lines about this machine and the data folder")
    probe_parser.add_argument("--data-dir", type=Path, default=None)
    probe_parser.add_argument("--wheels", type=Path, default=None, help="the folder ffcv would be installed from")
    summary_parser = commands.add_parser("summary", help="write RUN_DIR/SUMMARY.md")
    summary_parser.add_argument("--run-dir", type=existing_folder("the run folder of scripts/gpu-check.sh"), required=True)
    summary_parser.add_argument("--budget-s", type=positive_int, required=True)
    summary_parser.add_argument("--cpu", action="store_true", help="the run was a CPU rehearsal")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print("\n".join(probe(args.data_dir, args.wheels)))
        return 0
    text = summary_markdown(args.run_dir, args.budget_s, args.cpu, environment(Accelerator(cpu=use_cpu())))
    print(atomic_write(args.run_dir / "SUMMARY.md", lambda tmp: tmp.write_text(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
