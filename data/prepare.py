"""`python -m data.prepare`: encode the 64x64 .beton files that are missing or stale, and list them.

Prints one line per split: the .beton path, its image count and its field names (and whether it was
encoded now or reused). Data problems end with one `error: ...` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import OneLineParser, add_plugin_option, load_plugins
from common.files import DiskFull
from data.datasets import dataset_names
from data.encode import SYNTHETIC_PER_CLASS, SYNTHETIC_TEST, SYNTHETIC_TRAIN, prepare_dataset
from data.errors import DataError
from data.sources import DATA_DIR_ENV
from data.writer import FIELD_NAMES
from models import study_datasets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    load_plugins(argv, "python -m data.prepare")
    parser = OneLineParser(prog="python -m data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=dataset_names(), default=list(study_datasets()),
                        help=f"datasets to encode (default: the study's, {', '.join(study_datasets())})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"directory with the official dataset files (default: ${DATA_DIR_ENV}, else download)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the .beton files go (default: $DEEPNETS_CACHE_DIR, else data/cache)")
    parser.add_argument("--synthetic", action="store_true",
                        help=f"encode deterministic synthetic stand-ins ({SYNTHETIC_TRAIN} train+val, {SYNTHETIC_TEST} test images, "
                        f"at least {SYNTHETIC_PER_CLASS[0]} and {SYNTHETIC_PER_CLASS[1]} of each class)")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never try to download")
    add_plugin_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for name in args.datasets:
            encoded = prepare_dataset(name, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                      synthetic=args.synthetic, download=args.download)
            for split, path in encoded.paths.items():
                status = "encoded" if split in encoded.written else "cached"
                print(f"{path}  {encoded.counts[split]} images  fields {','.join(FIELD_NAMES)}  ({status})")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DiskFull as e:  # the cache folder filled up: nothing half-encoded stays
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
