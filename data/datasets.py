"""The dataset registry: one entry per dataset (its images, classes, normalisation, validation split, official files
and augmentations), from which every name, option and default derives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from data.augment import AugmentConfig
from data.errors import DataError
from data.formats import CifarFiles, CifarLayout, IdxFiles, SourceFormat
from data.imagenet64 import Imagenet64Files
from data.tiny_imagenet import TinyImageNetFiles

CLASS_TABLES = Path(__file__).resolve().parent / "classes"  # shipped with their sources: classes/README.md


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # CLI and record name
    title: str  # for people: "CIFAR-10"
    channels: int
    native_size: int  # the official files' image size (square); everything is resized to 64x64
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on [0, 1] values of the raw training set
    std: tuple[float, ...]
    train_size: int  # images left in the train split (official training set minus validation)
    val_size: int  # images held out of the official training set for validation
    source: SourceFormat
    augmentations: Mapping[str, AugmentConfig] = field(default_factory=dict, compare=False)  # recipe family -> config
    split_seed: int = 0  # fixed: the validation split is the same image set on every machine and run
    val_per_class: bool = False  # hold out val_size / classes images of each class (else val_size at random)
    # Epochs per preset on this dataset, over the preset's and its recipe's (--epochs over all).
    epochs: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def augmentation(self, family: str) -> AugmentConfig | None:
        """The augmentation of a recipe family ("none", "paper", "fast"); None means plain normalisation."""
        if family == "none":
            return None
        try:
            return self.augmentations[family]
        except KeyError:
            raise DataError(f"dataset {self.name} declares no {family!r} augmentation; "
                            f"expected one of: none, {', '.join(self.augmentations)}") from None


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    if not (len(spec.mean) == len(spec.std) == spec.channels):
        raise ValueError(f"dataset {spec.name!r}: mean and std need one value per channel ({spec.channels})")
    DATASETS[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}") from None


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

register_dataset(DatasetSpec(
    name="mnist", title="MNIST", channels=1, native_size=28, class_names=tuple("0123456789"),
    mean=(0.1307,), std=(0.3081,), train_size=50_000, val_size=10_000,
    source=IdxFiles(folders=("", "mnist"), torchvision_class="MNIST"),
    augmentations={
        "paper": AugmentConfig(degrees=15, translate=(0.1, 0.1), scale=(0.8, 1.2)),  # the study's RandomAffine
        "fast": AugmentConfig(degrees=10, translate=(0.1, 0.1)),  # digits must not flip
    },
))

register_dataset(DatasetSpec(
    name="cifar10", title="CIFAR-10", channels=3, native_size=32, class_names=CIFAR10_CLASSES,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), train_size=45_000, val_size=5_000,
    source=CifarFiles(layouts=(
        CifarLayout("cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                    tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), label_key=None),
        CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), label_key=b"labels"),
    ), torchvision_class="CIFAR10"),
    augmentations={
        # The study's flip -> RandomRotation -> RandomAffine -> ColorJitter, rotation resampled on its own.
        "paper": AugmentConfig(degrees=10, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10, hflip_p=0.5,
                               brightness=0.2, contrast=0.2, saturation=0.2, separate_rotation=True),
        "fast": AugmentConfig(hflip_p=0.5, translate=(0.125, 0.125)),
    },
))

register_dataset(DatasetSpec(
    name="fashion_mnist", title="Fashion-MNIST", channels=1, native_size=28,
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    mean=(0.2860,), std=(0.3530,), train_size=50_000, val_size=10_000,
    # Its files have MNIST's names, so they are only looked for in folders of their own.
    source=IdxFiles(folders=("fashion_mnist", "fashion-mnist"), torchvision_class="FashionMNIST"),
    augmentations={
        "paper": DATASETS["mnist"].augmentations["paper"],  # the study's grayscale recipe
        "fast": AugmentConfig(hflip_p=0.5, translate=(0.1, 0.1)),  # clothes, unlike digits, survive a mirror
    },
))

register_dataset(DatasetSpec(
    name="cifar100", title="CIFAR-100", channels=3, native_size=32,
    class_names=(  # the fine labels, in label order (the archive's meta file)
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
        "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
        "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
        "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
        "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
        "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
        "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
        "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
        "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe",
        "whale", "willow_tree", "wolf", "woman", "worm"),
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), train_size=45_000,
    val_size=5_000,
    source=CifarFiles(layouts=(
        CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), label_key=b"fine_labels"),
    ), torchvision_class="CIFAR100"),
    augmentations=DATASETS["cifar10"].augmentations,  # the same natural-image recipes
))


def imagenet_names() -> dict[str, str]:
    """ImageNet-1k's wnid -> name (underscores as spaces), in ImageNet 64x64's label order (map_clsloc.txt)."""
    rows = [line.split() for line in (CLASS_TABLES / "map_clsloc.txt").read_text().splitlines()]
    return {wnid: name.replace("_", " ") for wnid, _, name in rows}


IMAGENET_NAMES = imagenet_names()
TINY_WNIDS = tuple((CLASS_TABLES / "tiny-imagenet-200-wnids.txt").read_text().split())

register_dataset(DatasetSpec(
    name="tiny_imagenet", title="Tiny ImageNet", channels=3, native_size=64,
    class_names=tuple(IMAGENET_NAMES[wnid] for wnid in TINY_WNIDS),  # = the first name words.txt gives each
    # Over every pixel of the 100,000 official training images on [0, 1], as for MNIST and CIFAR (the pooled std,
    # not the mean of per-image stds that some publish beside the same mean).
    mean=(0.4802, 0.4481, 0.3975), std=(0.2764, 0.2689, 0.2816), train_size=90_000, val_size=10_000,
    val_per_class=True, source=TinyImageNetFiles(TINY_WNIDS),
    augmentations=DATASETS["cifar10"].augmentations,  # natural images: the study's recipes
    epochs={"fast": 16},  # twice CIFAR's images per epoch, 20x its classes: a starting point, not yet measured
))

register_dataset(DatasetSpec(
    name="imagenet64", title="ImageNet 64x64", channels=3, native_size=64,
    class_names=tuple(IMAGENET_NAMES.values()),  # labels 1...1000 in the files are map_clsloc.txt's order
    # ImageNet-1k's customary statistics (torchvision's references), not recomputed from these files, which could not
    # be obtained here: the pooled values over the training split's pixels, as tiny_imagenet's, would replace them.
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), train_size=1_231_167, val_size=50_000,
    val_per_class=True, source=Imagenet64Files(),
    augmentations=DATASETS["cifar10"].augmentations,
    epochs={"fast": 8},  # 1.2 M images an epoch: a starting point for a GPU box, not yet measured
))
