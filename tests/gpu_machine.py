"""A Python that has only what the GPU machine has, for the device-faithful rehearsal of scripts/gpu-check.sh.

The rehearsal in the project's own .venv cannot see what the GPU machine lacks: that venv has submitit, the
project installed, ffcv built from source. This builds a virtual environment beside it whose site-packages
links exactly the distributions listed in tests/gpu-machine-packages.txt and those they require, taken from the
Python running the tests: seconds to make, no download. Listed packages that are not installed here are left
out (the project uses none of them unless it imports them lazily).
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGES = Path(__file__).with_name("gpu-machine-packages.txt")


def listed(path: Path = PACKAGES) -> list[list[str]]:
    """Each line's alternatives (distribution names), comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [[name.strip() for name in line.split("|")] for line in lines if line]


def installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def with_requirements(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions among `names`, and everything they require (extras aside), by name."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found or (dist := installed(name)) is None:
            continue
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names a distribution occupies in site-packages: packages, modules, .pth files, its dist-info."""
    return {file.parts[0] for file in dist.files or [] if file.parts[0] not in ("..", "__pycache__")}


def build(target: Path, extra: tuple[str, ...] = ()) -> Path:
    """A venv at `target` that links the listed distributions (and `extra` ones) and their requirements;
    returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = target / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    names = [next((name for name in line if installed(name)), line[0]) for line in listed()] + list(extra)
    for dist in with_requirements(names).values():
        source = Path(dist.locate_file(""))
        for entry in top_level_entries(dist):
            link = site / entry
            if not link.exists() and (source / entry).exists():
                link.symlink_to(source / entry)
    return python
