"""Command-line helpers every entry point shares: one-line errors and checked number options."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


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
