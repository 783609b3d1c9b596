"""Which code a result came from: the commit from git, from a REVISION stamp in a tree copied without .git, and
the source digest that names the commit from any clone."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.results.provenance import STAMP, find, git_commit, source_digest, stamp
from helpers import REPO


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A small git checkout shaped like the project: code, a script, and a dataset cache that is not code."""
    root = tmp_path / "checkout"
    for path, text in {"bench/run.py": "print('run')\n", "models/vgg.py": "VGG = 16\n", "data/encode.py": "x = 1\n",
                       "scripts/setup.sh": "echo set up\n", "pyproject.toml": "[project]\n", "README.md": "# doc\n",
                       ".gitignore": "/data/cache/\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    (root / "data" / "cache").mkdir()
    (root / "data" / "cache" / "mnist.beton").write_bytes(b"\0" * 100)  # ignored, and not code either
    return root


def copy_without_git(root: Path, to: Path) -> Path:
    shutil.copytree(root, to, ignore=shutil.ignore_patterns(".git"))
    return to


def test_the_digest_is_the_same_in_the_checkout_its_copy_and_the_commit(checkout, tmp_path):
    copy = copy_without_git(checkout, tmp_path / "copy")
    (copy / "README.md").write_text("# docs are not code\n")
    assert source_digest(copy) == source_digest(checkout)
    first = git(checkout, "rev-parse", "HEAD")
    assert find(source_digest(copy), root=checkout) == first
    (checkout / "bench" / "run.py").write_text("print('faster')\n")
    git(checkout, "commit", "-qam", "second")
    assert find(source_digest(checkout), root=checkout) == git(checkout, "rev-parse", "HEAD")
    assert find(source_digest(copy), root=checkout) == first  # the copy still names the commit it came from
    (copy / "models" / "vgg.py").write_text("VGG = 19\n")
    assert find(source_digest(copy), root=checkout) is None  # changed code is no commit at all


def test_a_copy_without_git_takes_its_commit_from_the_stamp(checkout, tmp_path):
    commit = git(checkout, "rev-parse", "HEAD")
    assert git_commit(checkout) == commit
    assert git_commit(copy_without_git(checkout, tmp_path / "unstamped")) is None  # nothing to tell from
    assert stamp(checkout) == f"{commit} {source_digest(checkout)}"
    copy = copy_without_git(checkout, tmp_path / "copy")
    assert git_commit(copy) == commit
    (copy / "data" / "encode.py").write_text("x = 2\n")
    assert git_commit(copy) == f"{commit}+modified"  # the stamp no longer describes these files
    (checkout / "scripts" / "setup.sh").write_text("echo changed\n")
    assert git_commit(checkout) == f"{commit}+dirty"


def test_stamp_outside_a_checkout_is_one_line_and_exit_2(tmp_path):
    copy = shutil.copytree(REPO / "bench", tmp_path / "tree" / "bench")  # the module, run from a tree without git
    done = subprocess.run([sys.executable, "-m", "bench.results.provenance", "stamp"], cwd=copy.parent, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy.parent)})
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("python -m bench.results.provenance stamp: error: ") and "not a git checkout" in done.stderr
    assert not (copy.parent / STAMP).exists()
