"""scripts/setup.sh on a machine whose Python already has torch: the environment it makes uses that torch (no
download: pip may not reach an index here) and gets the project and its commands; a second run does nothing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO

pytestmark = pytest.mark.slow  # a real venv and a real pip install (about a minute)


def setup(env_dir, **env) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=600,
                          env={**environ, "PYTHON": sys.executable, "DEEPNETS_VENV": str(env_dir), "PIP_NO_INDEX": "1",
                               **env})


def test_setup_reuses_the_torch_of_a_python_that_has_one(tmp_path):
    env_dir = tmp_path / "env"
    done = setup(env_dir)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"setup: {sys.executable} already has torch; {env_dir} will use it"
    cuda = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "no CUDA: a CPU build"
    assert lines[1].startswith(f"setup: using torch {torch.__version__} from ") and cuda in lines[1]
    assert not any("installing torch" in line for line in lines)
    python = env_dir / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import torch, bench; print(torch.__file__); print(bench.__file__)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert where == [torch.__file__, str(REPO / "bench" / "__init__.py")]  # the same torch; the project in place
    assert not list(env_dir.glob("lib/python*/site-packages/torch"))  # no copy of its own
    models = subprocess.run([str(env_dir / "bin" / "deepnets-models")], capture_output=True, text=True, cwd=tmp_path)
    assert models.returncode == 0 and "| resnet18 " in models.stdout  # the console scripts are installed
    again = setup(env_dir)
    assert again.returncode == 0 and again.stdout == ""  # everything in place: nothing to do
