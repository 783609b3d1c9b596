"""scripts/gpu-check.sh: the CPU rehearsal run for real, and the script's own logic with a stand-in interpreter.

The rehearsal (`--cpu`) runs every step's real command line at tiny sizes, once for the module, in a Python
faithful to the GPU machine (tests/gpu_machine.py: only the packages it has, the project used in place, ffcv
installed by the check from its wheels when $DEEPNETS_DEVICE_WHEELS names them). The other tests give the
script a few lines of bash in place of Python, so that option errors, what the machine lacks, the ffcv install,
the budget's shares and what --out holds after each step are checked in seconds each.
"""
from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import gpu_machine
from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"
# The rehearsal's steps, in order (on a GPU the overhead runs for resnet18_improved and inception_v1).
STEPS = ["cuda-tests", "cuda-compile", "suite", "overhead-resnet18", "throughput", "sweep-eager", "sweep-compiled",
         "cuda-compile-bf16", "report", "summary"]
PYTEST_STEPS = ["cuda-tests", "cuda-compile", "cuda-compile-bf16"]
INSTALL_STEPS = ["install-ffcv", "import-ffcv"]
STEP_LINE = re.compile(r"^(?P<name>\S+) +(?P<status>ok|failed \(exit \d+\)|stopped: budget|skipped: budget) +"
                       r"\d+ s$", re.M)
HANDED_BACK = {"files": 8, "bytes": 16 * 2**20, "folders": 2}  # what a lent GPU machine returns from --out

# Stands in for Python: logs "PYTHONPATH :: arguments" to $FAKE_CALLS, fails what matches $FAKE_FAIL, hangs on
# what matches $FAKE_HANG, answers the probe with $FAKE_PROBE, writes a summary, and lets the tests step take
# $FAKE_PYTEST_S.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$PYTHONPATH :: $*" >> "$FAKE_CALLS"
case "$*" in
  *"${FAKE_FAIL:-no such command}"*) exit 1 ;;
  *"${FAKE_HANG:-no such command}"*) sleep 1000 ;;
  "-m bench.gpu_check probe"*) printf '%s\\n' "$FAKE_PROBE" ;;
  "-m bench.gpu_check summary --run-dir "*) echo "# fake summary" > "$5/SUMMARY.md" ;;
  "-m pytest"*) sleep "${FAKE_PYTEST_S:-0}" ;;
esac
"""
CPU_PROBE = {"ffcv": "ok", "cuda": "no", "device": "CPU: test", "slug": "cpu-test", "gpu_modes": "", "fast_batch": "512",
             "datasets": "", "mnist_files": "the four idx files in DIR/", "wheels": ""}
GPU_PROBE = {"cuda": "yes", "device": "NVIDIA H100 80GB HBM3", "slug": "nvidia-h100-80gb-hbm3",
             "gpu_modes": "compute mode exclusive_process, MIG mode disabled (a whole GPU)"}
NO_FFCV = "missing (ModuleNotFoundError: No module named 'ffcv')"


def run_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def fake_python(tmp_path: Path, **probe: str) -> dict:
    """Environment that makes the script run the stand-in interpreter, whose probe says `probe`."""
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    lines = "\n".join(f"{key}={value}" for key, value in {**CPU_PROBE, **probe}.items())
    return {"PYTHON": str(fake), "FAKE_PROBE": lines, "FAKE_CALLS": str(tmp_path / "calls")}


def step_lines(stdout: str) -> dict[str, str]:
    return {found["name"]: found["status"] for found in STEP_LINE.finditer(stdout)}


def handed_back(out: Path) -> set[str]:
    """The names in --out, after checking that a lent machine would return them all."""
    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) <= HANDED_BACK["files"]
    assert all(path.stat().st_size <= HANDED_BACK["bytes"] for path in files)
    assert all(len(path.relative_to(out).parts) - 1 <= HANDED_BACK["folders"] for path in out.rglob("*"))
    return {path.name for path in files}


# ----- the rehearsal, for real ------------------------------------------------------------------------------------

# ffcv's wheels for the GPU machine (.ci/run points this at them): the rehearsal installs ffcv from them as the
# check does there; without them, the faithful Python has this machine's ffcv instead.
DEVICE_WHEELS = os.environ.get("DEEPNETS_DEVICE_WHEELS")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, cache_dir) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("gpu-check")
    python = gpu_machine.build(tmp / "gpu-machine-python", extra=() if DEVICE_WHEELS else ("ffcv",))
    wheels = ["--wheels", DEVICE_WHEELS] if DEVICE_WHEELS else []
    # A budget that two busy cores can keep to; the shares and the budget's cuts have tests of their own.
    done = run_check("--cpu", "--budget-s", "900", *wheels, "--out", str(tmp / "out"), "--results-dir",
                     str(tmp / "results"), env={"PYTHON": str(python), "DEEPNETS_CACHE_DIR": str(cache_dir)})
    return done, tmp / "out"


@pytest.mark.slow
def test_rehearsal_runs_every_step_with_only_the_gpu_machines_packages(rehearsal):
    done, out = rehearsal
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = (INSTALL_STEPS if DEVICE_WHEELS else []) + STEPS
    assert step_lines(done.stdout) == dict.fromkeys(steps, "ok"), done.stdout
    assert ("ffcv imports: nothing to install" in done.stdout) is not bool(DEVICE_WHEELS)
    assert "s, no step failed; everything is in " in done.stdout and "out of budget" not in done.stdout
    # The CUDA tests were collected there (their modules import with only the GPU machine's packages and the
    # project uninstalled), and skip on a CPU: the quick ones in one pytest process, each CUDA-graph test in one of
    # its own.
    log = (out / "gpu-check.log").read_text()
    sections = {name: log.split(f"\n=== {name} (at most ", 1)[1].split("\n=== ", 1)[0] for name in PYTEST_STEPS}
    collected = re.search(r"=+ (\d+) skipped, (\d+) deselected in ", sections["cuda-tests"])
    assert collected and int(collected[1]) >= 10, sections["cuda-tests"][-3000:]
    assert "-v -s -p no:cacheprovider -m cuda and not spawns" in sections["cuda-tests"]
    for name, precision in (("cuda-compile", "fp16"), ("cuda-compile-bf16", "bf16")):
        assert re.search(rf"test_harness_under_cuda_graphs_compiles_two_graphs_and_learns\[{precision}\] SKIPPED",
                         sections[name]), sections[name]
        assert re.search(r"=+ 1 skipped, \d+ deselected in ", sections[name])


@pytest.mark.slow
def test_rehearsal_archive_holds_records_report_and_log(rehearsal):
    _, out = rehearsal
    (archive,) = out.glob("*.tar.gz")
    name = archive.name.removesuffix(".tar.gz")
    assert re.fullmatch(r"cpu-[a-z0-9-]+-\d{8}-\d{4}", name)
    assert handed_back(out) == {archive.name, "SUMMARY.md", "gpu-check.log"}
    with tarfile.open(archive) as tar:
        members = tar.getnames()
        log = tar.extractfile(f"{name}/gpu-check.log").read()
    assert {f"{name}/REPORT.md", f"{name}/SUMMARY.md", f"{name}/gpu-check.log"} <= set(members)
    assert any(re.fullmatch(rf"{name}/runs/fast_mnist-synthetic_resnet18_.*\.json", m) for m in members)
    assert any(re.fullmatch(rf"{name}/speed/resnet18_.*_eager_b2_synthetic\.json", m) for m in members)
    assert any(m.startswith(f"{name}/plots/") and m.endswith(".png") for m in members)
    for step in STEPS[:-1]:  # every command's output, under its own header
        assert f"\n=== {step} (at most ".encode() in log
    assert b"skipped: resnet18_cifar10_train_bf16_cl_compile-reduce-overhead_b2_synthetic" in log
    assert (out / "gpu-check.log").read_bytes().startswith(log)  # the plain copy has the closing lines too


@pytest.mark.slow
def test_rehearsal_summary_has_the_key_numbers(rehearsal):
    _, out = rehearsal
    summary = (out / "SUMMARY.md").read_text()
    assert "CPU rehearsal" in summary and "torch " in summary and "ffcv 1.0.2" in summary
    assert re.search(r"\| sweep-compiled +\| ok +\|", summary)
    assert re.search(r"\| resnet18 +\| 2 +\| bf16 +\|( [\d,.]+ +\|){3}", summary)  # the overhead ratio
    assert "1 point(s) measured (0 out of memory), 1 skipped by the sweep's budget" in summary
    assert re.search(r"\| resnet18 +\| +[\d,.]+ \| bf16 +\| off +\| +2 \|", summary)  # best img/s per model
    assert re.search(r"\| mnist +\| train +\| random +\| +[\d,.]+ \|", summary)  # the input pipeline, in its order
    assert re.search(r"\| synthetic +\| mnist +\| resnet18 +\| +[\d.]+ \|", summary)  # the suite's headline


# ----- the script's logic, with a stand-in interpreter ----------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--budget-s", "0"], "--budget-s"),
    (["--budget-s", "7m"], "--budget-s"),
    (["--budget-s"], "--budget-s"),
    (["--data-dir", "/nonexistent"], "--data-dir"),
    (["--cpu", "--data-dir", "."], "--data-dir"),
    (["--out", str(SCRIPT)], "--out"),
    (["--results-dir", str(SCRIPT)], "--results-dir"),
    (["--gpus", "2"], "unknown option '--gpus'"),
])
def test_bad_option_is_one_line_and_exit_2(tmp_path, args, option):
    done = run_check(*args, env=fake_python(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"gpu-check.sh: error: {option}")
    assert not (tmp_path / "calls").exists()  # refused before anything ran


@pytest.mark.parametrize("args, probe, message", [
    (["--cpu"], {"ffcv": NO_FFCV, "wheels": "assertpy-1.1-py3-none-any.whl"}, "--wheels: ffcv does not import here"),
    ([], {}, "no CUDA device here"),
    (["--data-dir", "."], {"cuda": "yes"}, "--data-dir: no MNIST in"),
])
def test_what_the_machine_lacks_is_one_line_and_exit_2(tmp_path, args, probe, message):
    done = run_check(*args, "--results-dir", str(tmp_path / "results"), env=fake_python(tmp_path, **probe))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"gpu-check.sh: error: {message}")
    assert not (tmp_path / "results").exists()


def test_a_python_without_the_projects_requirements_is_one_line_and_exit_2(tmp_path):
    env = {**fake_python(tmp_path), "FAKE_FAIL": "-m bench.gpu_check probe"}
    done = run_check("--cpu", "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("gpu-check.sh: error: ") and "bench.gpu_check probe failed" in done.stderr


def test_a_relative_data_dir_in_the_environment_is_where_the_command_was_typed(tmp_path):
    (tmp_path / "datasets").mkdir()
    env = {**os.environ, **fake_python(tmp_path, cuda="yes", datasets="mnist"), "DEEPNETS_DATA_DIR": "datasets"}
    done = subprocess.run(["bash", str(SCRIPT), "--budget-s", "1", "--results-dir", str(tmp_path / "results")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    probe = next(call for call in (tmp_path / "calls").read_text().splitlines() if "gpu_check probe" in call)
    assert probe.endswith(f"--data-dir {tmp_path / 'datasets'}")


def test_ffcv_is_installed_from_the_wheels_into_a_private_folder(tmp_path):
    wheels = "assertpy-1.1-py3-none-any.whl ffcv-1.0.2-cp38-abi3-linux_x86_64.whl"  # what the probe found missing
    done = run_check("--cpu", "--wheels", str(tmp_path / "wheels"),
                     "--results-dir", str(tmp_path / "results"), env=fake_python(tmp_path, ffcv=NO_FFCV, wheels=wheels))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"install-ffcv": "ok", "import-ffcv": "ok"}.items() <= step_lines(done.stdout).items()
    calls = (tmp_path / "calls").read_text().splitlines()
    install = next(call for call in calls if " :: -m pip install" in call)
    site = re.search(r"--target (\S+) ", install)[1]
    assert install.endswith(f"--no-index --no-deps --no-compile --no-cache-dir --target {site} "
                            f"{tmp_path}/wheels/assertpy-1.1-py3-none-any.whl "
                            f"{tmp_path}/wheels/ffcv-1.0.2-cp38-abi3-linux_x86_64.whl")
    after = calls[calls.index(install) + 1:]
    assert after and all(call.startswith(f"{site}:{REPO}") for call in after)  # the wheels come first
    assert not Path(site).parent.exists()  # the private folder goes when the check ends


def test_a_failed_ffcv_install_stops_the_check_but_still_hands_back_the_log(tmp_path):
    env = {**fake_python(tmp_path, ffcv=NO_FFCV, wheels="ffcv-1.0.2-cp38-abi3-linux_x86_64.whl"),
           "FAKE_FAIL": "-m pip install"}
    done = run_check("--cpu", "--out", str(tmp_path / "out"), "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 1
    assert step_lines(done.stdout) == {"install-ffcv": "failed (exit 1)", "summary": "ok"}
    assert "ffcv is not usable here" in done.stdout and "install-ffcv failed; everything is in" in done.stdout
    assert {"gpu-check.log", "SUMMARY.md"} < handed_back(tmp_path / "out")


def test_only_wheels_of_what_is_missing_are_installed(tmp_path):
    from bench.gpu_check import wheels_to_install

    for name in ("ffcv-1.0.2-cp38-abi3-linux_x86_64.whl", "numpy-1.0-py3-none-any.whl",
                 "no_such_distribution-1.0-py3-none-any.whl"):
        (tmp_path / name).touch()
    assert wheels_to_install(tmp_path) == ["ffcv-1.0.2-cp38-abi3-linux_x86_64.whl",
                                           "no_such_distribution-1.0-py3-none-any.whl"]  # numpy stays the machine's
    assert wheels_to_install(tmp_path / "absent") == []


@pytest.mark.parametrize("budget, ran", [
    (1, []),
    # The rehearsal's minimums sum to 435 s: 120 s give each step about a quarter of its minimum, which leaves the
    # overhead (3 s) and the throughput (7 s) under the 10 s worth starting. The bf16 CUDA-graph test, after the
    # compiled sweep, gets what the others left: here most of it, as the stand-in's steps end at once.
    (120, ["cuda-tests", "cuda-compile", "suite", "sweep-eager", "sweep-compiled", "cuda-compile-bf16", "report"]),
])
def test_budget_skips_the_later_steps_and_names_them(tmp_path, budget, ran):
    env = {**fake_python(tmp_path), "FAKE_PYTEST_S": "2"}
    done = run_check("--cpu", "--budget-s", str(budget), "--out", str(tmp_path / "out"),
                     "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    cut = [step for step in STEPS[:-1] if step not in ran]
    assert step_lines(done.stdout) == {**dict.fromkeys(cut, "skipped: budget"), **dict.fromkeys(ran, "ok"),
                                       "summary": "ok"}
    assert f"out of budget ({budget} s): skipped or stopped {' '.join(cut)}\n" in done.stdout
    calls = (tmp_path / "calls").read_text()
    assert calls.count(" -m pytest ") == sum(step in ran for step in PYTEST_STEPS)
    assert calls.count("bench.speed") == sum(step in ran for step in ("sweep-eager", "sweep-compiled"))
    (run_dir,) = (tmp_path / "results").iterdir()
    assert handed_back(tmp_path / "out") == {"gpu-check.log", "SUMMARY.md", f"{run_dir.name}.tar.gz"}


def plan(stdout: str) -> dict[str, tuple[int, int | None]]:
    """The printed plan: step -> (minimum, cap; None for what the others leave)."""
    rows = re.findall(r"^  (\S+) +(\d+) s +(?:(\d+) s|what the others leave)", stdout, flags=re.M)
    return {name: (int(minimum), int(cap) if cap else None) for name, minimum, cap in rows}


def test_the_plan_at_the_default_budget_gives_every_step_at_least_its_minimum(tmp_path):
    # The lent GPU machine: ffcv installed from its wheels, MNIST, two overhead models. --plan prints and stops.
    env = fake_python(tmp_path, **GPU_PROBE, ffcv=NO_FFCV, wheels="ffcv-1.0.2-cp38-abi3-linux_x86_64.whl",
                      datasets="mnist")
    done = run_check("--plan", "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("gpu-check.sh: plan for a budget of 540 s (each step's minimum is an estimate until a GPU run "
                        "confirms it):")
    steps = plan(done.stdout)
    assert list(steps) == ["install-ffcv", "import-ffcv", "cuda-tests", "cuda-compile", "suite",
                           "overhead-resnet18_improved", "overhead-inception_v1", "throughput", "sweep-eager",
                           "sweep-compiled", "cuda-compile-bf16", "report", "summary"]
    assert all(cap >= minimum for minimum, cap in steps.values() if cap is not None), steps
    grace = int(re.search(r"and (\d+) s for a stopped step's grace", done.stdout)[1])
    assert 540 - 60 <= sum(cap for _, cap in steps.values() if cap) + grace <= 540  # room to spare, within budget
    assert "below its minimum" not in done.stdout
    assert (tmp_path / "calls").read_text().count(" :: ") == 1 and not (tmp_path / "results").exists()  # the probe only
    # A budget smaller than the minimums says which steps it shortens.
    small = plan(run_check("--plan", "--budget-s", "300", env=env).stdout)
    assert all(cap < minimum for minimum, cap in small.values() if cap is not None)


def test_every_cuda_test_that_starts_processes_is_marked_spawns():
    # The check runs tests marked spawns in pytest processes of their own (no CUDA context held in the parent, as an
    # EXCLUSIVE_PROCESS GPU requires): a CUDA test that starts a process without the mark would run in the quick
    # tests' process, which holds one.
    starts = {"run_bench", "run_module", "run_check", "subprocess", "Popen"}
    found = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_marks = {node.attr for statement in tree.body if isinstance(statement, ast.Assign)
                        and any(getattr(target, "id", "") == "pytestmark" for target in statement.targets)
                        for node in ast.walk(statement.value) if isinstance(node, ast.Attribute)}
        for function in tree.body:
            if not isinstance(function, ast.FunctionDef) or not function.name.startswith("test_"):
                continue
            marks = module_marks | {node.attr for decorator in function.decorator_list
                                    for node in ast.walk(decorator) if isinstance(node, ast.Attribute)}
            names = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}
            if "cuda" in marks and names & starts:
                found.append(function.name)
                assert "spawns" in marks, f"{path.name}::{function.name} starts processes: mark it spawns"
    assert found == ["test_harness_under_cuda_graphs_compiles_two_graphs_and_learns"]


def test_gpu_command_lines_are_valid_for_the_real_parsers(tmp_path):
    # The rehearsal runs other sizes and models than a GPU: read the GPU's command lines with the real parsers.
    from accelerate.commands.launch import launch_command_parser

    from bench.suite.options import build_parser as run_parser
    from bench.report import build_parser as report_parser
    from bench.speed import build_parser as speed_parser
    from models import model_names

    env = fake_python(tmp_path, **GPU_PROBE, datasets="mnist cifar10")
    done = run_check("--data-dir", str(tmp_path), "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert step_lines(done.stdout) == dict.fromkeys(
        ["cuda-tests", "cuda-compile", "suite", "overhead-resnet18_improved", "overhead-inception_v1", "throughput",
         "sweep-eager", "sweep-compiled", "cuda-compile-bf16", "report", "summary"], "ok")
    assert f"gpu-check.sh: {GPU_PROBE['gpu_modes']}\n" in done.stdout  # the probe's compute mode and MIG, said
    (run_dir,) = (tmp_path / "results").iterdir()
    assert run_dir.name.startswith("nvidia-h100-80gb-hbm3-")
    lines = [line.split(" :: ", 1)[1] for line in (tmp_path / "calls").read_text().splitlines()]
    # The CUDA tests: the quick ones, then each CUDA-graph test in a pytest process of its own, fp16 first; -v.
    quick, fp16, bf16 = (line.removeprefix("-m pytest -v -s -p no:cacheprovider ") for line in lines if "-m pytest" in line)
    assert quick.startswith("-m cuda and not spawns --timeout 90 tests/")
    assert {"tests/test_cuda.py", "tests/test_augment.py", "tests/test_models.py", "tests/test_machine.py"} <= set(
        quick.split(" "))
    assert "tests/test_scale.py" not in quick  # a module without CUDA tests is not even imported
    assert (fp16, bf16) == ("-m cuda and spawns -k fp16 tests/test_cuda.py", "-m cuda and spawns -k bf16 tests/test_cuda.py")
    by_module = {}
    for call in (line.split(" ") for line in lines if "-m pytest" not in line):
        by_module.setdefault(call[1], []).append(call[2:])
    for args, model in zip(by_module["bench.overhead"], ["resnet18_improved", "inception_v1"], strict=True):
        assert args == ["--model", model, "--batch-size", "512", "--precision", "bf16", "--channels-last", "--steps",
                        "20", "--rounds", "3"]
        assert model in model_names()
    eager, compiled = (speed_parser().parse_args(args) for args in by_module["bench.speed"])
    assert eager.models == ["resnet18", "inception_v1", "resnet18_improved", "inception_v1_improved", "vgg16",
                            "vgg16_improved"]
    assert (eager.precisions, eager.batch_sizes, eager.compile) == (["bf16", "fp16"], [256, 1024], ["off"])
    # One compiled point: resnet18_improved, bf16, the fast preset's batch, CUDA graphs.
    assert (compiled.models, compiled.precisions, compiled.batch_sizes, compiled.compile) == (
        ["resnet18_improved"], ["bf16"], [512], ["reduce-overhead"])
    for sweep in (eager, compiled):
        assert (sweep.modes, sweep.channels_last, sweep.results_dir) == (["train"], "on", run_dir)
    # Caps at the default 540 s (ffcv here: no install steps): 530 s over minimums of 450 s, so the eager sweep's 40 s
    # become 47 s and the compiled sweep's 60 s 70 s; bench.speed starts points in four fifths of them.
    assert (eager.time_budget_s, compiled.time_budget_s) == (37, 56)
    assert by_module["data.throughput"] == [["--datasets", "mnist", "cifar10", "--data-dir", str(tmp_path)]]
    (launch,) = by_module["accelerate.commands.launch"]
    launcher = launch_command_parser().parse_args(launch)
    assert (launcher.num_processes, launcher.training_script) == (1, "bench/run.py")
    suite = run_parser().parse_args(launcher.training_script_args)
    assert (suite.preset, suite.datasets, suite.data_dir, suite.results_dir, suite.epochs) == (
        "fast", ["mnist", "cifar10"], tmp_path, run_dir, 4)
    assert report_parser().parse_args(by_module["bench.report"][0]).results_dir == [run_dir]


def test_speed_time_budget_rejects_a_negative_number(capsys):
    from bench.speed import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--time-budget-s", "-1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "bench/speed.py: error: argument --time-budget-s: expected a number >= 0, got '-1'\n"


@pytest.mark.slow
def test_a_hung_step_costs_its_cap_and_the_rest_still_runs(tmp_path):
    # At 300 s the rehearsal's steps get two thirds of their minimums (290 s over 435 s): the hung overhead is stopped
    # after its 10 s, and every later step still gets its own cap.
    env = {**fake_python(tmp_path), "FAKE_HANG": "-m bench.overhead"}
    done = run_check("--cpu", "--budget-s", "300", "--results-dir", str(tmp_path / "r"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert step_lines(done.stdout) == {**dict.fromkeys(STEPS, "ok"), "overhead-resnet18": "stopped: budget"}, done.stdout
    seconds = int(re.search(r"^overhead-resnet18 +stopped: budget +(\d+) s$", done.stdout, flags=re.M)[1])
    assert 10 <= seconds <= 12


def test_out_holds_a_whole_archive_after_every_step_even_when_the_check_is_killed(tmp_path):
    # The machine is taken back while the suite runs: --out must already hold what the steps before it did.
    env = {**os.environ, **fake_python(tmp_path), "FAKE_HANG": "bench/run.py"}
    out = tmp_path / "out"
    check = subprocess.Popen(["bash", str(SCRIPT), "--cpu", "--out", str(out), "--results-dir", str(tmp_path / "r")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        calls = tmp_path / "calls"
        for _ in range(300):  # until the suite has started
            if calls.exists() and "bench/run.py" in calls.read_text():
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(check.pid, signal.SIGKILL)
        check.wait()
    (archive,) = out.glob("*.tar.gz")
    assert not list(out.glob("*.tmp"))
    name = archive.name.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:  # whole: it opens, and holds what the finished steps left
        steps = tar.extractfile(f"{name}/steps.tsv").read().decode()
        summary = tar.extractfile(f"{name}/SUMMARY.md").read().decode()
    assert steps.startswith("cuda-tests\tok\t") and "suite" not in steps
    assert "(interim)" in summary and "| cuda-tests | ok |" in summary
    assert "=== cuda-tests" in (out / "gpu-check.log").read_text()
    assert (out / "SUMMARY.md").read_text() == summary


def test_the_projects_venv_is_the_default_interpreter(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    env = fake_python(tmp_path)
    os.symlink(env.pop("PYTHON"), venv / "bin" / "python")
    without_python = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "--budget-s", "1", "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120,
                          env={**without_python, **env, "DEEPNETS_VENV": str(venv)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"gpu-check.sh: {venv}/bin/python; follow it with" in done.stdout
    assert "gpu_check probe" in (tmp_path / "calls").read_text()
