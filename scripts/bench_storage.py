"""Raw pixels or JPEG in the .beton, by hand: encode rate, file size and load rate of a dataset's train split.

    python scripts/bench_storage.py --dataset tiny_imagenet --data-dir DIR --cache-dir DIR [--qualities 90 75]

It prepares the dataset (raw, as the harness stores it), then writes its train split again with the harness's
writer as raw and as JPEG at each quality (the images read back from the raw file), timing each write; then it
times ffcv's train loader (random order, uint8 batches on the CPU, this process's share of the cores) over each
file for --seconds, and the JPEG's fidelity (PSNR against the raw pixels). A benchmark, not a test: numbers vary
by machine, and 2 CPU cores say little about a GPU box's loader.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data.encode import prepare_dataset
from data.loaders import default_num_workers, make_loader
from data.writer import beton_fields, write_fields

CPU = torch.device("cpu")


def read_back(path: Path):
    """(images, labels) batches of a .beton in file order, copied out of ffcv's reused buffers."""
    for images, labels, _ in make_loader(path, batch_size=1024, train=False, device=CPU):
        yield images.numpy().copy(), labels.numpy().copy()


def load_rate(path: Path, seconds: float, workers: int) -> float:
    """Images per second out of the train loader, whole epochs until `seconds` have passed (the first batch out)."""
    loader = make_loader(path, batch_size=512, train=True, device=CPU, num_workers=workers)
    count, started = 0, None
    while started is None or time.perf_counter() - started < seconds:
        for images, _, _ in loader:
            if started is None:
                started = time.perf_counter()
                continue
            count += len(images)
    return count / (time.perf_counter() - started)


def psnr(raw: Path, jpeg: Path, images: int = 2048) -> float:
    """Mean PSNR (dB) of the JPEG file's first images against the raw file's."""
    pairs = zip(read_back(raw), read_back(jpeg))
    errors = []
    for (a, _), (b, _) in pairs:
        errors.append(((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(axis=1))
        if sum(map(len, errors)) >= images:
            break
    return float(np.mean(10 * np.log10(255 ** 2 / np.maximum(np.concatenate(errors), 1e-12))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tiny_imagenet")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--plugin", default=None, help="a module registering the dataset (a variant)")
    parser.add_argument("--qualities", nargs="+", type=int, default=[90, 75])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.plugin:
        __import__(args.plugin)
    encoded = prepare_dataset(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)
    source, count = encoded.paths["train"], encoded.counts["train"]
    workers = default_num_workers()
    print(f"{args.dataset} train split, {count:,} images; loader: {workers} workers, batch 512, random order")
    print("| storage | file GB | encode img/s | load img/s | PSNR dB |\n|---|---:|---:|---:|---:|")
    for quality in [None, *args.qualities]:
        name = "raw" if quality is None else f"jpeg{quality}"
        path = args.cache_dir / f"storage-{args.dataset}-{name}.beton"
        started = time.perf_counter()
        write_fields(path, beton_fields(3, quality), count, read_back(source), timeout_s=3600, desc=name)
        encode = count / (time.perf_counter() - started)
        fidelity = f"{psnr(source, path):.1f}" if quality else "exact"
        print(f"| {name} | {path.stat().st_size / 1e9:.3f} | {encode:,.0f} | {load_rate(path, args.seconds, workers):,.0f} "
              f"| {fidelity} |", flush=True)
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
