"""The packages import each other in one direction only: each may import those below it, never one above."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

# Bottom first. The commands (bench/*.py) stand on top of everything.
LAYERS = ["common", "models", "data", "bench.results", "bench.measuring", "bench.suite", "bench.training",
          "bench.reporting", "bench"]


def package_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (a package's own modules included), None for other libraries."""
    parts = module.split(".")
    if parts[0] not in ("common", "models", "data", "bench"):
        return None
    if parts[0] == "bench" and len(parts) > 1 and f"bench.{parts[1]}" in LAYERS:
        return f"bench.{parts[1]}"
    return parts[0]


def imports(path: Path) -> set[str]:
    """Every module `path` imports from, at any depth (function-level imports count: they are imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_packages_import_only_the_layers_below_them():
    upward = []
    for top in ("common", "models", "data", "bench"):
        for path in sorted((REPO / top).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mine = package_of(module)
            for imported in imports(path):
                theirs = package_of(imported)
                if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                    upward.append(f"{path.relative_to(REPO)} ({mine}) imports {imported} ({theirs})")
    assert not upward, "\n".join(sorted(set(upward)))
