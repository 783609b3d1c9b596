"""scripts/setup.sh on a machine whose Python already has torch: the environment it makes uses that torch (no
download) and gets the project and its commands; a machine that has every requirement makes no network call (a
package index of our own counts the requests), one that lacks some and reaches no index says which in one line;
a second run does nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import gpu_machine
from helpers import REPO

pytestmark = pytest.mark.slow  # real venvs and real pip installs (about a minute each)


@pytest.fixture
def index():
    """A package index that has nothing and counts what it is asked: (its URL, the paths asked for)."""
    asked: list[str] = []

    class Nothing(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Nothing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/simple", asked
    server.shutdown()


def setup(env_dir, index_url: str, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """setup.sh into `env_dir` with `python`'s torch, pip asking only `index_url` (no config file, no local wheels)."""
    environ = {key: value for key, value in os.environ.items()
               if key not in ("VIRTUAL_ENV", "CONDA_PREFIX") and not key.startswith("PIP_")}
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                          timeout=600, env={**environ, "PYTHON": python, "DEEPNETS_VENV": str(env_dir),
                                            "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index_url,
                                            "PIP_RETRIES": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def test_setup_reuses_the_torch_of_a_python_that_has_everything_and_asks_no_index(tmp_path, index):
    url, asked = index
    env_dir = tmp_path / "env"
    done = setup(env_dir, url)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    cuda = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "no CUDA: a CPU build"
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and done.stderr == "", done.stdout + done.stderr  # its own lines, no warnings
    assert lines[0] == f"setup: {sys.executable} already has torch; {env_dir} will use it"
    assert lines[1].startswith(f"setup: using torch {torch.__version__} from ") and cuda in lines[1]
    assert lines[2] == f"setup: installed deepnets-bench into {env_dir} (every requirement was here: no package index asked)"
    python = env_dir / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import torch, bench; print(torch.__file__); print(bench.__file__)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert where == [torch.__file__, str(REPO / "bench" / "__init__.py")]  # the same torch; the project in place
    assert not list(env_dir.glob("lib/python*/site-packages/torch"))  # no copy of its own
    models = subprocess.run([str(env_dir / "bin" / "deepnets-models")], capture_output=True, text=True, cwd=tmp_path)
    assert models.returncode == 0 and "| resnet18 " in models.stdout  # the console scripts are installed
    tests = setup(env_dir, url, "--test")  # this Python has the test extras too
    assert tests.returncode == 0 and tests.stderr == "", tests.stdout + tests.stderr[-3000:]
    assert tests.stdout.splitlines()[-1].startswith("setup: installed deepnets-bench[test] into ")
    for args in ((), ("--test",)):  # everything in place: nothing to do
        again = setup(env_dir, url, *args)
        assert again.returncode == 0 and again.stdout == again.stderr == ""
    assert asked == []  # no package index was asked, ever


def test_on_the_gpu_machine_setup_asks_no_index_and_names_what_the_tests_lack(tmp_path, index):
    # The GPU machine's packages (tests/gpu_machine.py) and ffcv: all the project needs to run, not submitit.
    url, asked = index
    python = gpu_machine.build(tmp_path / "gpu-machine-python", extra=("ffcv",))
    env_dir = tmp_path / "env"
    done = setup(env_dir, url, python=str(python))
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == (f"setup: installed deepnets-bench into {env_dir} (every requirement was "
                                            "here: no package index asked)")
    assert asked == []
    tests = setup(env_dir, url, "--test", python=str(python))
    assert tests.returncode == 1
    assert tests.stdout.splitlines()[-1] == (f"setup: installing what deepnets-bench[test] lacks into {env_dir}: "
                                             "submitit")
    assert tests.stderr.count("\n") == 1 and tests.stderr.startswith(
        "setup: error: deepnets-bench[test] needs submitit, not installed here, and no package index has them")
    assert asked and all("submitit" in path for path in asked)
