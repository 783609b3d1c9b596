"""Command-line helpers every entry point shares: one-line errors, checked number options, and `--plugin`."""
from __future__ import annotations

import argparse
import importlib
import sys
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


def load_plugins(argv: Sequence[str] | None, prog: str) -> None:
    """Import the `--plugin MODULE` modules before the options are read, so that the models and datasets
    they register are valid choices. A module that cannot be imported is a one-line error."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    for module in known.plugin:
        try:
            importlib.import_module(module)
        except Exception as error:  # an import can fail in any way; the user needs the one line
            print(f"{prog}: error: --plugin {module}: cannot import it ({error.__class__.__name__}: {error})",
                  file=sys.stderr)
            raise SystemExit(2) from None


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): a module that registers models with "
                        "models.register_model or datasets with data.datasets.register_dataset")
