"""The command line a first-time user meets: --dry-run, plugins loaded by path, grouped --help, the console
scripts. Each test starts the real commands in subprocesses; none trains."""
from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from helpers import REPO, run_module

EXAMPLE = REPO / "examples" / "tiny_cnn.py"


def test_dry_run_prints_the_resolved_runs_and_trains_nothing(tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    done = run_module("bench.run", "--dry-run", "--preset", "smoke", "--models", "resnet18", "vgg16",
                      "--datasets", "mnist", "--seeds", "0", "1", "--epochs", "3", "--batch-size", "64",
                      "--results-dir", str(results), "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("4 run(s), 1 process(es) on cpu, global batch 64 (64 x 1 process), peak lr 0.025 "
                               "(vgg16: 0.0025)"), lines[0]
    assert "set by options: --epochs 3 --batch-size 64" in lines[0]
    rows = [line for line in lines if line.startswith("| smoke_mnist-synthetic_")]
    assert len(rows) == 4 and all("|        3 |" in row for row in rows)  # epochs
    assert lines[-1] == "dry run: 4 run(s) resolved, nothing trained"
    assert not results.exists() and not cache.exists()  # nothing written


@pytest.mark.slow
def test_a_plugin_file_registers_a_model_even_beside_a_models_package_of_ones_own(tmp_path):
    """A user's working folder with a `models/` package: naming the plugin as a module finds the harness's `models`
    instead and fails in one line; naming it as a file registers its model."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "tiny_cnn.py").write_text(EXAMPLE.read_text())
    run = [sys.executable, str(REPO / "bench" / "run.py"), "--dry-run", "--preset", "smoke", "--models", "tiny_cnn",
           "--datasets", "mnist"]
    by_module = subprocess.run([*run, "--plugin", "models.tiny_cnn"], cwd=tmp_path, capture_output=True, text=True)
    assert by_module.returncode == 2
    assert by_module.stderr.startswith("bench/run.py: error: --plugin models.tiny_cnn: cannot import it")
    by_file = subprocess.run([*run, "--plugin", "models/tiny_cnn.py"], cwd=tmp_path, capture_output=True, text=True)
    assert by_file.returncode == 0, by_file.stderr
    assert "| smoke_mnist-synthetic_tiny_cnn_fast_" in by_file.stdout
    missing = subprocess.run([*run, "--plugin", "nowhere.py"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "--plugin nowhere.py: cannot import it (FileNotFoundError" in missing.stderr


def test_the_example_plugin_keeps_the_builder_contract():
    """The README's example: built on the meta device for its parameters and FLOPs, for 1 and 3 input channels."""
    done = run_module("models", "--plugin", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| tiny_cnn ")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert "5,226" in cells and "5,514" in cells  # parameters with 1 and 3 input channels, 10 classes


def test_help_is_grouped_by_what_the_options_are_for():
    done = run_module("bench.run", "--help")
    assert done.returncode == 0
    groups = [line[:-1] for line in done.stdout.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert groups == ["options", "what to run", "recipe", "precision and speed", "data", "output", "cluster",
                      "communication between processes", "tracking"]


def test_every_console_script_names_a_command_that_answers_help():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"deepnets-run", "deepnets-report", "deepnets-models"} <= set(scripts)
    code = ("import importlib, sys\n"
            "for target in sys.argv[1:]:\n"
            "    module, function = target.split(':')\n"
            "    try:\n"
            "        getattr(importlib.import_module(module), function)(['--help'])\n"
            "    except SystemExit as done:\n"
            "        assert done.code in (0, None), target\n"
            "    else:\n"
            "        raise AssertionError(f'{target} --help did not exit')\n"
            "    print('ok', target)\n")
    done = subprocess.run([sys.executable, "-c", code, *scripts.values()], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    answered = {line for line in done.stdout.splitlines() if line.startswith("ok ")}  # help text may say "hook "
    assert answered == {f"ok {target}" for target in scripts.values()}
