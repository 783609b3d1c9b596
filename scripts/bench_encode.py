"""Encoding at ImageNet's scale, by hand: peak memory and speed at two or more sizes, and a kill mid-encode.

    python scripts/bench_encode.py --images 100000 400000 --dir /tmp/encode-bench [--kill]

For each size it writes ImageNet-64-shaped files in the official npz layout (extracted: train_data_batch_1..10.npz,
val_data.npz with 10,000 images; generated a block at a time, so never in memory), registers an `imagenet64`
variant with 10 validation images per class, and runs `python -m data.prepare` on it while sampling the anonymous
memory of its whole process tree (the encoder, ffcv's writer and its worker; Pss_Anon, so that the pages the
forked processes share count once) every 0.1 s. It prints the peak, each split's rate as the progress bar gave
it, and the wall time. With --kill it first SIGKILLs an encode halfway
through the train split and checks what a later run finds. A benchmark, not a test: numbers vary by machine.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
VAL_PER_CLASS, TEST_IMAGES, CLASSES, PIXELS = 10, 10_000, 1000, 12288


def write_batch(path: Path, labels: np.ndarray, rng: np.random.Generator, block: int = 4096) -> None:
    """One npz batch as np.savez lays it out (data.npy, labels.npy), its pixels written a block at a time."""
    with zipfile.ZipFile(path, "w") as npz:
        with npz.open("data.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (len(labels), PIXELS)})
            for start in range(0, len(labels), block):
                rows = min(block, len(labels) - start)  # 8x8 blocks of noise: cheap to make, any content will do
                member.write(rng.integers(0, 256, (rows, 3, 8, 8), dtype=np.uint8).repeat(8, 2).repeat(8, 3).tobytes())
        with npz.open("labels.npy", "w") as member:
            np.lib.format.write_array(member, labels)


def write_dataset(folder: Path, images: int) -> None:
    rng = np.random.default_rng(images)
    labels = rng.permutation(np.arange(images) % CLASSES + 1)
    for number, part in enumerate(np.array_split(labels, 10), start=1):
        container = folder / f"Imagenet64_train_part{1 if number <= 5 else 2}_npz"
        container.mkdir(parents=True, exist_ok=True)
        write_batch(container / f"train_data_batch_{number}.npz", part, rng)
    (folder / "Imagenet64_val_npz").mkdir(exist_ok=True)
    write_batch(folder / "Imagenet64_val_npz" / "val_data.npz", rng.permutation(np.arange(TEST_IMAGES) % CLASSES + 1), rng)


def anonymous(root: psutil.Process) -> tuple[int, int]:
    """(Pss_Anon summed over a process and its descendants: their anonymous memory, pages that forked processes
    share counted once; the largest RssAnon among them)."""
    total = largest = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            rollup = Path(f"/proc/{process.pid}/smaps_rollup").read_text()
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        pss, rss = re.search(r"Pss_Anon:\s+(\d+) kB", rollup), re.search(r"RssAnon:\s+(\d+) kB", status)
        total += int(pss.group(1)) * 1024 if pss else 0  # a zombie has neither
        largest = max(largest, int(rss.group(1)) * 1024 if rss else 0)
    return total, largest


def prepare(name: str, plugin: Path, data: Path, cache: Path,
            kill_at: int | None = None) -> tuple[tuple[int, int], str, float]:
    """Run data.prepare; (the peaks of `anonymous`, its stderr, seconds). With `kill_at`, SIGKILL it once the
    train split's temporary .beton has that many bytes."""
    command = [sys.executable, "-m", "data.prepare", "--plugin", str(plugin), "--datasets", name, "--data-dir",
               str(data), "--cache-dir", str(cache), "--no-download"]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak, stderr = psutil.Process(process.pid), (0, 0), []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    while process.poll() is None:
        peak = tuple(map(max, peak, anonymous(root)))
        if kill_at is not None:
            temps = list(cache.glob(f".{name}_train_64.beton.*.tmp"))
            if temps and temps[0].stat().st_size > kill_at:
                process.send_signal(signal.SIGKILL)
        time.sleep(0.1)
    reader.join()
    return peak, "".join(stderr), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", type=int, default=[100_000, 400_000], help="training images per size")
    parser.add_argument("--dir", type=Path, required=True, help="where the generated files and .betons go")
    parser.add_argument("--kill", action="store_true", help="first kill an encode halfway and check what is left")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; anonymous memory of the encoder's process tree, sampled every 0.1 s")
    for images in args.images:
        folder = args.dir / f"imagenet64-{images}"
        name = f"imagenet64_{images}"
        plugin = folder / "variant.py"
        if not (folder / "files" / "Imagenet64_val_npz" / "val_data.npz").exists():
            write_dataset(folder / "files", images)
            plugin.write_text("import dataclasses\nfrom data.datasets import DATASETS, register_dataset\n"
                              f"register_dataset(dataclasses.replace(DATASETS['imagenet64'], name={name!r}, "
                              f"val_size={VAL_PER_CLASS * CLASSES}, train_size={images - VAL_PER_CLASS * CLASSES}))\n")
        cache = folder / "cache"
        if args.kill:
            halfway = (images - VAL_PER_CLASS * CLASSES) * PIXELS // 2
            for path in cache.glob(f"{name}_*"):
                path.unlink()
            prepare(name, plugin, folder / "files", cache, kill_at=halfway)
            left = sorted(p.name for p in cache.iterdir() if name in p.name)
            print(f"{images:,} images, SIGKILL halfway through the train split; in the cache: {left}")
        for path in cache.glob(f"{name}_*"):  # encode from scratch
            path.unlink()
        peak, stderr, seconds = prepare(name, plugin, folder / "files", cache)
        rates = {split: (count, rate) for split, count, rate in  # the last of each split's final lines
                 re.findall(rf"{name} (\w+): 100%\|[^|]*\| (\d+)/\d+ \[[0-9:]+<00:00, +([0-9.]+)img/s\]", stderr)}
        sizes = {split: (cache / f"{name}_{split}_64.beton").stat().st_size for split in ("train", "val", "test")}
        print(f"{images:,} images: peak anonymous memory {peak[0] / 2**20:,.0f} MiB (largest process: RssAnon "
              f"{peak[1] / 2**20:,.0f} MiB); "
              + ", ".join(f"{split} {int(count):,} at {float(rate):,.0f} img/s" for split, (count, rate) in rates.items())
              + f"; {seconds:,.1f} s in all (source hashing and output sha256 included); "
              + ", ".join(f"{split} {size / 1e9:.2f} GB" for split, size in sizes.items()))
        if args.kill:
            print(f"  the run after the kill left no temporary file: {not list(cache.glob('.*.tmp'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
