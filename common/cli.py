"""Command-line helpers every entry point shares: one-line errors, checked number options, and `--plugin`."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Sequence


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option prints a single `error:` line (no usage block) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def number_type(cast: Callable[[str], float], description: str, accept: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse `type` that parses with `cast` and rejects values outside `accept` in one line."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not accept(value) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


positive_int = number_type(int, "a positive integer", lambda value: value >= 1)
non_negative_int = number_type(int, "an integer >= 0", lambda value: value >= 0)
positive_float = number_type(float, "a positive number", lambda value: value > 0)
non_negative_float = number_type(float, "a number >= 0", lambda value: value >= 0)


def existing_folder(expected: str) -> Callable[[str], Path]:
    """An argparse `type` for a folder that must exist; the error says what it was expected to hold."""

    def parse(text: str) -> Path:
        path = Path(text)
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is not a folder; expected {expected}")
        return path

    return parse


def import_plugin(plugin: str) -> None:
    """Import a plugin named as a module (`my_models`, found on the Python path) or as a file (`path/to/my_models.py`).
    A file is imported under a name of its own, so that no package of the same name (a `models/` folder in the
    working directory, say) can shadow it or the harness's own `models`."""
    if not plugin.endswith(".py"):
        importlib.import_module(plugin)
        return
    path = Path(plugin).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    name = f"deepnets_plugin_{path.stem}"
    if sys.modules.get(name) is not None and getattr(sys.modules[name], "__file__", None) == str(path):
        return  # already imported: registering its models twice would be an error
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as an import does (dataclasses and pickling look it up)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_plugins(argv: Sequence[str] | None, prog: str) -> None:
    """Import the `--plugin` modules or files before the options are read, so that the models and datasets they
    register are valid choices. A plugin that cannot be imported is a one-line error."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    for plugin in known.plugin:
        try:
            import_plugin(plugin)
        except Exception as error:  # an import can fail in any way; the user needs the one line
            print(f"{prog}: error: --plugin {plugin}: cannot import it ({error.__class__.__name__}: {error}); "
                  "expected a module on the Python path or a .py file", file=sys.stderr)
            raise SystemExit(2) from None


def add_plugin_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                        help="import a module (on the Python path) or a .py file first (repeatable): one that "
                        "registers models with models.register_model or datasets with data.datasets.register_dataset")
