"""Which code a result came from, also where the tree was copied without `.git`: the commit, a REVISION stamp, and a
digest of the source that `python -m bench.results.provenance find DIGEST` maps back to its commit (docs/design.md).
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
STAMP = "REVISION"
PROG = "python -m bench.results.provenance"
PYTHON_FOLDERS = ("bench", "models", "data")  # their .py files; data/ also holds the dataset cache
SOURCE_FOLDERS = (*PYTHON_FOLDERS, "scripts")


def is_source(path: str) -> bool:
    """Whether a repository-relative POSIX path is code that the digest covers (caches, bytecode and results
    are not)."""
    top = path.split("/", 1)[0]
    return (top in PYTHON_FOLDERS and path.endswith(".py")) or top == "scripts" or path == "pyproject.toml"


def git_blob_id(content: bytes) -> str:
    """The object id git gives a file with this content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def digest(entries: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over sorted (path, blob id) pairs: the same for a working tree and a commit with the same files."""
    text = "".join(f"{path} {blob}\n" for path, blob in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()


def source_digest(root: Path = REPO_ROOT) -> str:
    """The digest of the code files in the tree at `root` as they are now."""
    candidates = [root / "pyproject.toml", *(path for top in SOURCE_FOLDERS for path in (root / top).rglob("*"))]
    relative = (path.relative_to(root).as_posix() for path in candidates if path.is_file())
    return digest((path, git_blob_id((root / path).read_bytes())) for path in relative if is_source(path))


def git(*args: str, root: Path = REPO_ROOT) -> str | None:
    """git's output in `root`, or None outside a git checkout (or without git)."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The commit the tree at `root` is, or came from; None when neither git nor a stamp can tell."""
    if (commit := git("rev-parse", "HEAD", root=root)) is not None:
        dirty = git("status", "--porcelain", "--untracked-files=no", root=root)
        return f"{commit}+dirty" if dirty else commit
    stamp = root / STAMP
    if not stamp.is_file():
        return None
    commit, _, stamped_digest = stamp.read_text().strip().partition(" ")
    return commit if stamped_digest == source_digest(root) else f"{commit.removesuffix('+dirty')}+modified"


def stamp(root: Path = REPO_ROOT) -> str:
    """Write REVISION (commit and source digest) at the checkout's root, for a copy that will lack `.git`."""
    commit = git_commit(root)
    if commit is None or not (root / ".git").exists():
        raise RuntimeError(f"{root} is not a git checkout; expected to stamp the checkout the copy is made from")
    text = f"{commit} {source_digest(root)}\n"
    (root / STAMP).write_text(text)
    return text.strip()


def find(wanted: str, root: Path = REPO_ROOT, max_count: int = 2000) -> str | None:
    """The newest commit (of the last `max_count` on any branch) whose code files hash to `wanted`."""
    for commit in (git("rev-list", "--all", f"--max-count={max_count}", root=root) or "").split():
        listing = git("ls-tree", "-r", "--full-tree", commit, root=root) or ""
        entries = []
        for line in listing.splitlines():
            meta, path = line.split("\t", 1)
            _mode, kind, blob = meta.split()
            if kind == "blob" and is_source(path):
                entries.append((path, blob))
        if digest(entries) == wanted:
            return commit
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("digest", help="print this tree's source digest")
    commands.add_parser("stamp", help=f"write {STAMP} (commit and source digest) before copying the tree")
    find_parser = commands.add_parser("find", help="name the commit whose code files have this source digest")
    find_parser.add_argument("digest")
    args = parser.parse_args(argv)
    if args.command == "digest":
        print(source_digest())
    elif args.command == "stamp":
        try:
            print(f"{STAMP}: {stamp()}")
        except RuntimeError as error:
            print(f"{PROG} stamp: error: {error}", file=sys.stderr)
            return 2
    else:
        commit = find(args.digest)
        if commit is None:
            print(f"{PROG} find: no commit of this clone has exactly these code files (uncommitted changes, or a "
                  f"commit this clone lacks)", file=sys.stderr)
            return 1
        print(commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
