"""Input-pipeline throughput: our FFCV loader against a plain torch DataLoader on the same images, ready for the model
on the device (`python -m data.throughput`); a benchmark, not a test.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from common.cli import (OneLineParser, add_plugin_option, load_plugins, non_negative_float, positive_float,
                        positive_int)
from data.augment import AugmentConfig, DevicePreprocess
from data.datasets import dataset_names
from data.encode import EncodedDataset, prepare_dataset
from data.errors import DataError
from data.loaders import default_num_workers, make_loader, training_order
from models import study_datasets


class ArrayImages(Dataset):
    """Decoded uint8 HWC images in memory, one sample per index, optionally with per-sample transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None) -> None:
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:  # torchvision works on CHW; hand the batch back as HWC
            image = self.transform(image.permute(2, 0, 1)).permute(1, 2, 0)
        return image, self.labels[index]


def torchvision_transform(cfg: AugmentConfig) -> v2.Compose:
    """The study's per-sample CPU augmentation for a config (torchvision's own classes)."""
    steps: list = []
    if cfg.hflip_p:
        steps.append(v2.RandomHorizontalFlip(cfg.hflip_p))
    if cfg.has_affine:
        steps.append(v2.RandomAffine(degrees=cfg.degrees, translate=cfg.translate, scale=cfg.scale,
                                     shear=cfg.shear or None))
    if cfg.has_color_jitter:
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation))
    return v2.Compose(steps)


def read_split(path: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` images and labels of a .beton, in file order, as host arrays."""
    images, labels, count = [], [], 0
    for batch_images, batch_labels, _ in make_loader(path, batch_size=1024, train=False, device=torch.device("cpu")):
        images.append(batch_images.numpy().copy())
        labels.append(batch_labels.numpy().copy())
        count += len(batch_labels)
        if count >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def images_per_second(epochs: Callable[[], Iterable], preprocess: DevicePreprocess, device: torch.device,
                      min_seconds: float, warmup: int = 3) -> float:
    """Rate of preprocessed batches on the device, timed inside epochs: each epoch's first `warmup` batches
    (the loader filling its queue again) stay out, every window closes at its epoch's last batch (an epoch
    restart never falls inside one), and epochs follow until the windows add up to `min_seconds` (at least
    one epoch): a window of a tenth of a second, which a fast GPU pipeline gives, is mostly timer noise."""
    count, seconds, generator = 0, 0.0, torch.Generator(device=device)
    while True:
        start = None
        for number, (images, _labels, *_rest) in enumerate(epochs()):
            if number == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            out = preprocess(images.to(device, non_blocking=True), generator)
            if start is not None:
                count += out.shape[0]
        if start is None:
            raise DataError(f"an epoch has no more than the {warmup} warm-up batches; expected a smaller batch size")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        if seconds >= min_seconds:
            return count / seconds


@dataclass
class Measurement:
    dataset: str
    pipeline: str
    order: str
    ffcv: float
    dataloader: float
    dataloader_cpu_aug: float | None


def measure(encoded: EncodedDataset, pipeline: str, device: torch.device, batch_size: int, min_seconds: float,
            workers: int, max_images: int, memory_bytes: float | None) -> Measurement:
    train = pipeline == "train"
    spec = encoded.spec
    augment = spec.augmentation("paper") if train else None
    preprocess = DevicePreprocess(spec.mean, spec.std, augment, channels_last=True)
    path = encoded.paths["train" if train else "test"]

    order = training_order(path.stat().st_size, 1, memory_bytes)[0] if train else "sequential"
    loader = make_loader(path, batch_size=batch_size, train=train, device=device, num_workers=workers, order=order)
    ffcv_rate = images_per_second(lambda: loader, preprocess, device, min_seconds)

    images, labels = read_split(path, max_images)
    torch.set_num_threads(workers)  # ffcv changed it; give the DataLoader's process the same cores

    def plain(transform: Callable | None) -> float:
        dataloader = DataLoader(ArrayImages(images, labels, transform), batch_size=batch_size, shuffle=train,
                                num_workers=workers, pin_memory=device.type == "cuda", drop_last=train,
                                persistent_workers=True)
        return images_per_second(lambda: dataloader, preprocess if transform is None else
                                 DevicePreprocess(spec.mean, spec.std, None, channels_last=True), device, min_seconds)

    return Measurement(spec.name, pipeline, order, ffcv_rate, plain(None),
                       plain(torchvision_transform(augment)) if train else None)


def main(argv: Sequence[str] | None = None) -> int:
    load_plugins(argv, "python -m data.throughput")
    parser = OneLineParser(prog="python -m data.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=dataset_names(), default=list(study_datasets()),
                        help=f"default: the study's, {', '.join(study_datasets())}")
    parser.add_argument("--pipelines", nargs="+", choices=("train", "eval"), default=["train", "eval"])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic datasets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=positive_int, default=512)
    parser.add_argument("--min-seconds", type=non_negative_float, default=2.0, metavar="S",
                        help="time whole epochs (their first batches excluded) until S seconds are timed (default 2)")
    parser.add_argument("--workers", type=positive_int, default=default_num_workers(), help="loader threads/processes")
    parser.add_argument("--max-images", type=positive_int, default=100_000, metavar="N",
                        help="images the plain DataLoader holds in memory: the split's first N (default %(default)s)")
    parser.add_argument("--loader-memory", type=positive_float, metavar="GB", default=None,
                        help="memory a training file may fill through the page cache (default: three quarters of this "
                        "machine's); a larger one is read in quasi-random order, as a run would")
    add_plugin_option(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    try:
        for name in args.datasets:
            encoded = prepare_dataset(name, data_dir=args.data_dir, cache_dir=args.cache_dir, synthetic=args.synthetic)
            for pipeline in args.pipelines:
                rows.append(measure(encoded, pipeline, device, args.batch_size, args.min_seconds, args.workers,
                                    args.max_images, args.loader_memory and args.loader_memory * 1e9))
    except DataError as error:
        print(f"python -m data.throughput: error: {error}", file=sys.stderr)
        return 2
    table = pd.DataFrame([vars(row) for row in rows])
    table["ffcv / dataloader"] = table["ffcv"] / table["dataloader"]
    table["ffcv / cpu-aug"] = table["ffcv"] / table["dataloader_cpu_aug"]
    print(f"images/s reaching {device} ready for the model; batch {args.batch_size}, {args.workers} workers, "
          f"{'synthetic' if args.synthetic else 'real'} data")
    print(table.to_markdown(index=False, floatfmt=",.2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
