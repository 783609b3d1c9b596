"""What a run cost, DAWNBench-style (the fastest machine is seldom the cheapest): price per device-hour x devices x wall
hours, for the whole run and to the target, from --price-per-hour or a --price-table matched to the device's name.
"""
from __future__ import annotations

import argparse
import csv
import re
from dataclasses import dataclass
from pathlib import Path

from common.cli import positive_float

TABLE_HEADER = ["device", "usd_per_hour"]


@dataclass(frozen=True)
class Pricing:
    """The prices a suite was given: one for every device, and/or (device name part, USD per hour) pairs."""

    per_hour: float | None = None
    table: tuple[tuple[str, float], ...] = ()

    def for_device(self, device_name: str) -> float | None:
        """USD per device-hour for a device name: --price-per-hour, else the longest matching table entry."""
        if self.per_hour is not None:
            return self.per_hour
        for key, price in sorted(self.table, key=lambda entry: len(entry[0]), reverse=True):
            if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", device_name, flags=re.IGNORECASE):
                return price
        return None


def price_table(text: str) -> tuple[tuple[str, float], ...]:
    """argparse type of --price-table: the file's (device, USD per hour) rows, or a one-line error."""
    path = Path(text)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror}; expected a CSV file "
                                         f"with the header {','.join(TABLE_HEADER)}") from None
    if not rows or [cell.strip() for cell in rows[0]] != TABLE_HEADER:
        raise argparse.ArgumentTypeError(f"{text}: expected a CSV file whose first line is {','.join(TABLE_HEADER)}")
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            device, price = row[0].strip(), float(row[1])
        except (IndexError, ValueError):
            device, price = "", -1.0
        if not device or not price >= 0:
            raise argparse.ArgumentTypeError(f"{text} line {number}: expected a device name and a price >= 0 in USD "
                                             f"per hour, got {','.join(row)!r}")
        entries.append((device, price))
    return tuple(entries)


def add_cost_options(group: argparse._ArgumentGroup) -> None:
    """The runner's price options, in its `output` help group."""
    group.add_argument("--price-per-hour", type=positive_float, metavar="USD",
                       help="price of one device (one process) for an hour: each record gets the run's cost and its "
                       "cost to target (device-hours x price)")
    group.add_argument("--price-table", type=price_table, metavar="FILE",
                       help="CSV with the header device,usd_per_hour: the price per device kind, matched against the "
                       "device's name (longest match first); --price-per-hour wins over it")


def pricing(args: argparse.Namespace) -> Pricing:
    return Pricing(per_hour=args.price_per_hour, table=args.price_table or ())


def cost_metrics(price: float | None, devices: int, wall_time_s: float, to_target_wall_s: float | None) -> dict:
    """The run's cost metrics: price x devices x wall hours, for the run and to its target."""
    if price is None:
        return {"price_per_hour_usd": None, "cost_usd": None, "cost_to_target_usd": None}
    rate = price * devices / 3600
    return {"price_per_hour_usd": price, "cost_usd": rate * wall_time_s,
            "cost_to_target_usd": rate * to_target_wall_s if to_target_wall_s is not None else None}
