"""Tiny ImageNet and ImageNet 64x64 from small files written in each official format (every class present, a few
images each, the validation size overridden as a plugin would): read, bad inputs named in one line, encoded and
loaded back bit for bit, and trained end to end."""
from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data.datasets import DATASETS, IMAGENET_NAMES, TINY_WNIDS, get_spec
from data.encode import prepare_dataset
from data.errors import DataError
from data.loaders import make_loader
from helpers import load_raw, plugin_env, read_raw, records_in, run_bench, run_module

CPU = torch.device("cpu")
CLASS_TABLES = Path(__file__).resolve().parents[1] / "data" / "classes"
# The variants a user would declare in a --plugin file for small files: one validation image per class.
VARIANTS = '''
import dataclasses
from data.datasets import DATASETS, register_dataset
register_dataset(dataclasses.replace(DATASETS["tiny_imagenet"], name="tiny_small", train_size=200, val_size=200))
register_dataset(dataclasses.replace(DATASETS["imagenet64"], name="imagenet64_small", train_size=1000, val_size=1000))
'''


@pytest.fixture(scope="module", autouse=True)
def small_variants():
    exec(VARIANTS, {})  # registered here too, as the runner's --plugin registers them
    yield
    for name in ("tiny_small", "imagenet64_small"):
        del DATASETS[name]


# ---------------------------------------------------------------- the class tables

def test_class_tables_are_the_shipped_files():
    table = CLASS_TABLES / "map_clsloc.txt"  # the dataset authors' file, byte for byte (classes/README.md)
    assert hashlib.sha256(table.read_bytes()).hexdigest() in (CLASS_TABLES / "README.md").read_text()
    rows = [line.split() for line in table.read_text().splitlines()]
    assert [int(label) for _, label, _ in rows] == list(range(1, 1001))  # ImageNet 64x64's label order
    imagenet, tiny = get_spec("imagenet64"), get_spec("tiny_imagenet")
    assert imagenet.class_names[:2] == ("kit fox", "English setter") and imagenet.num_classes == 1000
    assert list(IMAGENET_NAMES) == [wnid for wnid, _, _ in rows]  # not torchvision's sorted order
    assert len(TINY_WNIDS) == 200 == tiny.num_classes and list(TINY_WNIDS) == sorted(set(TINY_WNIDS))
    assert tiny.class_names[TINY_WNIDS.index("n02124075")] == "Egyptian cat"


# ---------------------------------------------------------------- Tiny ImageNet

def write_tiny(root: Path, rng: np.random.Generator, as_zip: bool = False, per_class: int = 2) -> dict:
    """tiny-imagenet-200/ with every class (wnids.txt in another order than the labels'), `per_class` training
    JPEGs each (the first one grayscale) and one validation JPEG each; returns what the reader should decode."""
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(rng.permutation(TINY_WNIDS)) + "\n")
    (folder / "words.txt").write_text("".join(f"{wnid}\t{IMAGENET_NAMES[wnid]}\n" for wnid in TINY_WNIDS))

    def save(path: Path, gray: bool = False) -> np.ndarray:
        pixels = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1))
        image = Image.fromarray(pixels).convert("L" if gray else "RGB")
        image.save(path, "JPEG", quality=90)
        return np.asarray(Image.open(path).convert("RGB"))  # what decoding gives back (JPEG is lossy)

    train, val, annotations = [], [], []
    for label, wnid in enumerate(TINY_WNIDS):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        train += [(save(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", gray=(i == 0)), label)
                  for i in range(per_class)]
    for number, label in enumerate(rng.permutation(200)):
        val.append((save(folder / "val" / "images" / f"val_{number}.JPEG"), label))
        annotations.append(f"val_{number}.JPEG\t{TINY_WNIDS[label]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    if as_zip:
        with zipfile.ZipFile(root / "tiny-imagenet-200.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                archive.write(path, path.relative_to(root))
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()
    return {split: (np.stack([image for image, _ in rows]), np.array([label for _, label in rows]))
            for split, rows in (("train", train), ("test", val))}


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_tiny_imagenet_reads_its_official_layout(tmp_path, as_zip):
    expected = write_tiny(tmp_path / "d", np.random.default_rng(0), as_zip)
    raw = read_raw(load_raw("tiny_small", tmp_path / "d", tmp_path / "cache", download=False))
    for split in ("train", "test"):
        assert np.array_equal(getattr(raw, f"{split}_images"), expected[split][0])
        assert np.array_equal(getattr(raw, f"{split}_labels"), expected[split][1])
    gray = raw.train_images[0]  # the grayscale JPEG, as RGB
    assert gray.shape == (64, 64, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    assert ("zip" if as_zip else "folder") in raw.origin
    plan = get_spec("tiny_imagenet").source.download()  # the public archive, md5-checked
    assert plan.files == ((("http://cs231n.stanford.edu/tiny-imagenet-200.zip",), "tiny-imagenet-200.zip",
                           "90528d7ca1a48142e341f4ef8d21d0de"),)


def _lose_a_wnid(folder: Path) -> Path:
    wnids = folder / "wnids.txt"
    wnids.write_text("\n".join(line for line in wnids.read_text().splitlines() if line != "n01443537"))
    return wnids


def _lose_a_class_folder(folder: Path) -> Path:
    for path in (folder / "train" / "n01443537" / "images").iterdir():
        path.unlink()
    return folder / "train" / "n01443537" / "images"


def _unknown_val_class(folder: Path) -> Path:
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text().replace("\tn01443537\t", "\tn99999999\t"))
    return annotations


def _corrupt_jpeg(folder: Path) -> Path:
    image = folder / "train" / "n01443537" / "images" / "n01443537_1.JPEG"
    image.write_bytes(image.read_bytes()[:100])
    return image


def _small_jpeg(folder: Path) -> Path:
    image = folder / "val" / "images" / "val_3.JPEG"
    Image.new("RGB", (32, 32)).save(image, "JPEG")
    return image


@pytest.mark.parametrize("damage,message", [
    (_lose_a_wnid, "lacks n01443537; expected Tiny ImageNet's 200 classes"),
    (_lose_a_class_folder, "no JPEG of class n01443537"),
    (_unknown_val_class, "line .* expected an image file and one of wnids.txt's classes"),
    (_corrupt_jpeg, "not a readable JPEG"),
    (_small_jpeg, "a 32x32 image; expected 64x64"),
])
def test_bad_tiny_imagenet_files_are_one_line_naming_the_file(tmp_path, damage, message):
    write_tiny(tmp_path / "d", np.random.default_rng(1))
    bad = damage(tmp_path / "d" / "tiny-imagenet-200")
    with pytest.raises(DataError, match=message) as err:  # the pixels' problems show as they are decoded
        read_raw(load_raw("tiny_small", tmp_path / "d", tmp_path / "cache", download=False))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_a_bad_jpeg_met_while_encoding_leaves_no_part_of_a_split(tmp_path):
    write_tiny(tmp_path / "d", np.random.default_rng(1))
    bad = _small_jpeg(tmp_path / "d" / "tiny-imagenet-200")  # in the last split encoded, the test split
    with pytest.raises(DataError, match="a 32x32 image; expected 64x64") as err:
        prepare_dataset("tiny_small", data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", download=False)
    assert str(bad) in str(err.value)
    whole_or_nothing(tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny_small_test_64.beton").exists()


def whole_or_nothing(cache: Path) -> None:
    """Splits encoded before the bad file was met are whole (with their manifests); no part of another is left."""
    if cache.exists():
        assert not list(cache.glob(".*.tmp"))
        assert sorted(p.stem for p in cache.glob("*.beton")) == sorted(p.stem for p in cache.glob("*_64.json"))


def test_a_truncated_tiny_imagenet_zip_is_one_line_naming_it(tmp_path):
    write_tiny(tmp_path / "d", np.random.default_rng(2), as_zip=True)
    archive = tmp_path / "d" / "tiny-imagenet-200.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"tiny-imagenet-200.zip: not a readable zip"):
        load_raw("tiny_small", tmp_path / "d", tmp_path / "cache", download=False)


# ---------------------------------------------------------------- ImageNet 64x64

def write_imagenet64(root: Path, rng: np.random.Generator, npz: bool = True, as_zip: bool = False) -> dict:
    """Both training parts (batches 1-5 and 6-10, 200 images each: every label twice) and the validation batch
    (every label once), labels 1...1000, as the npz or the pickled variant; returns the decoded images."""
    suffix, extension = ("_npz", ".npz") if npz else ("", "")
    labels = {number: batch for number, batch in enumerate(np.split(rng.permutation(np.repeat(np.arange(1, 1001), 2)),
                                                                    10), start=1)}
    labels[None] = rng.permutation(np.arange(1, 1001))
    data = {number: rng.integers(0, 256, (len(batch), 12288), dtype=np.uint8) for number, batch in labels.items()}
    for number in labels:
        container = ("Imagenet64_val" if number is None else
                     f"Imagenet64_train_part{1 if number <= 5 else 2}") + suffix
        name = (f"train_data_batch_{number}" if number else "val_data") + extension
        batch = {"data": data[number], "labels": labels[number]}
        if number:
            batch["mean"] = data[number].mean(axis=0)
        buffer = io.BytesIO()
        if npz:
            np.savez(buffer, **batch)
        else:
            pickle.dump({**batch, "labels": labels[number].tolist()}, buffer)
        if as_zip:
            with zipfile.ZipFile(root / f"{container}.zip", "a", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(f"{container}/{name}", buffer.getvalue())
        else:
            (root / container).mkdir(parents=True, exist_ok=True)
            (root / container / name).write_bytes(buffer.getvalue())

    def images(numbers: list) -> np.ndarray:
        flat = np.concatenate([data[number] for number in numbers])
        return flat.reshape(-1, 3, 64, 64).transpose(0, 2, 3, 1)

    return {"train": (images(list(range(1, 11))), np.concatenate([labels[n] for n in range(1, 11)]) - 1),
            "test": (images([None]), labels[None] - 1)}


@pytest.mark.parametrize("npz", [True, False], ids=["npz", "pickled"])
@pytest.mark.parametrize("as_zip", [False, True], ids=["folders", "zips"])
def test_imagenet64_reads_both_variants_zipped_or_not(tmp_path, npz, as_zip):
    (tmp_path / "d").mkdir()
    expected = write_imagenet64(tmp_path / "d", np.random.default_rng(3), npz, as_zip)
    raw = read_raw(load_raw("imagenet64_small", tmp_path / "d", tmp_path / "cache", download=False))
    for split in ("train", "test"):
        assert np.array_equal(getattr(raw, f"{split}_images"), expected[split][0])  # planes -> HWC, 0-based labels
        assert np.array_equal(getattr(raw, f"{split}_labels"), expected[split][1])
    assert ("npz" if npz else "pickled") in raw.origin


def _label(value: int):
    def damage(root: Path) -> Path:
        path = root / "Imagenet64_train_part2_npz" / "train_data_batch_7.npz"
        batch = dict(np.load(path))
        batch["labels"][3] = value
        np.savez(path, **batch)
        return path
    return damage


def _truncated(root: Path) -> Path:
    path = root / "Imagenet64_val_npz" / "val_data.npz"
    path.write_bytes(path.read_bytes()[:-5000])
    return path


def _lose_a_batch(root: Path) -> Path:
    (root / "Imagenet64_train_part1_npz" / "train_data_batch_4.npz").unlink()
    return root / "Imagenet64_train_part1_npz"


def _lose_a_part(root: Path) -> Path:
    for path in (root / "Imagenet64_train_part2_npz").iterdir():
        path.unlink()
    (root / "Imagenet64_train_part2_npz").rmdir()
    return root


@pytest.mark.parametrize("damage,message", [
    (_label(0), "label 0 out of range; expected 1..1000"),
    (_label(1001), "label 1001 out of range; expected 1..1000"),
    (_truncated, "cannot read it"),
    (_lose_a_batch, "neither holds train_data_batch_4.npz"),
    (_lose_a_part, "has Imagenet64_train_part1_npz, Imagenet64_val_npz but not Imagenet64_train_part2_npz.zip"),
])
def test_bad_imagenet64_files_are_one_line_naming_the_file(tmp_path, damage, message):
    (tmp_path / "d").mkdir()
    write_imagenet64(tmp_path / "d", np.random.default_rng(4))
    bad = damage(tmp_path / "d")
    with pytest.raises(DataError, match=message) as err:
        prepare_dataset("imagenet64_small", data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", download=False)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_imagenet64_images_cut_short_are_named_as_they_are_read(tmp_path):
    """An npz whose data.npy header announces more rows than it holds: its labels read fine, its pixels end early."""
    (tmp_path / "d").mkdir()
    write_imagenet64(tmp_path / "d", np.random.default_rng(5))
    path = tmp_path / "d" / "Imagenet64_train_part1_npz" / "train_data_batch_2.npz"
    batch = dict(np.load(path))
    with zipfile.ZipFile(path, "w") as npz:  # data.npy: the header of 200 rows, then 150 of them
        with npz.open("data.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": (200, 12288)})
            member.write(batch["data"][:150].tobytes())
        with npz.open("labels.npy", "w") as member:
            np.lib.format.write_array(member, batch["labels"])
    with pytest.raises(DataError, match=r"train_data_batch_2.npz: its images end within image 150; truncated"):
        read_raw(load_raw("imagenet64_small", tmp_path / "d", tmp_path / "cache", download=False))


def test_imagenet64_is_not_downloadable_and_says_what_to_place(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"ImageNet 64x64 not found in .* and it cannot be downloaded: place "
                                        r"Imagenet64_train_part1_npz.zip, .* \(or the older Imagenet64_train_part1.zip"):
        load_raw("imagenet64", tmp_path / "empty", tmp_path / "cache", download=True)


# ---------------------------------------------------------------- encoded and loaded

@pytest.mark.parametrize("name", ["tiny_small", "imagenet64_small"])
def test_encoded_splits_hold_every_class_and_load_back_bit_for_bit(tmp_path, name):
    (tmp_path / "d").mkdir()
    rng = np.random.default_rng(6)
    expected = (write_tiny if name == "tiny_small" else write_imagenet64)(tmp_path / "d", rng)
    encoded = prepare_dataset(name, data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", download=False)
    classes = encoded.spec.num_classes
    assert encoded.counts == {"train": classes, "val": classes, "test": classes}  # 2 per class: one held out
    images, labels = [], []
    for split in ("train", "val"):
        loader = make_loader(encoded.paths[split], batch_size=256, train=False, device=CPU, num_workers=1)
        batches = [(x.clone(), y.clone()) for x, y, _ in loader]
        split_labels = torch.cat([y for _, y in batches]).numpy()
        assert np.bincount(split_labels, minlength=classes).tolist() == [1] * classes
        images.append(torch.cat([x for x, _ in batches]).numpy())
        labels.append(split_labels)
    # train + val is the official training set, re-ordered: compare as sorted sets of (label, image bytes)
    got = sorted(zip(np.concatenate(labels).tolist(), (image.tobytes() for image in np.concatenate(images))))
    want = sorted(zip(expected["train"][1].tolist(), (image.tobytes() for image in expected["train"][0])))
    assert got == want
    test = make_loader(encoded.paths["test"], batch_size=256, train=False, device=CPU, num_workers=1)
    assert np.array_equal(torch.cat([x.clone() for x, _, _ in test]).numpy(), expected["test"][0])


# ---------------------------------------------------------------- trained end to end, reported, and timed

@pytest.mark.slow
def test_both_datasets_train_in_a_run_then_report_and_time_their_loaders(tmp_path):
    """A real suite on the official-format files (tiny_cnn, one epoch), the loader told it may use 1 MB so that it
    reads both training files in quasi-random order; then the report over its records and data.throughput."""
    data, results, cache = tmp_path / "d", tmp_path / "results", tmp_path / "cache"
    data.mkdir()
    write_tiny(data, np.random.default_rng(7))
    write_imagenet64(data, np.random.default_rng(8), npz=False, as_zip=True)
    env = plugin_env(tmp_path, "variants", VARIANTS)
    common = ["--plugin", "variants", "--datasets", "tiny_small", "imagenet64_small", "--data-dir", str(data),
              "--loader-memory", "0.001"]
    done = run_bench([*common, "--plugin", "examples/tiny_cnn.py", "--models", "tiny_cnn", "--preset", "smoke",
                      "--no-synthetic", "--epochs", "1", "--batch-size", "50", "--warmup-steps", "1",
                      "--no-inference"], results, cache, env=env)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    records = {record.dataset: record for record in records_in(results)}
    for name, classes in (("tiny_small", 200), ("imagenet64_small", 1000)):
        record, metrics = records[name], records[name].metrics
        assert record.status == "finished" and record.config["loader_order"] == "quasi_random"
        assert metrics["test_acc"] <= metrics["test_top5_acc"] <= 1  # 200 and 1,000 classes: top-5 too
        assert record.test_confusion is None and len(record.class_names) == len(record.test_per_class_acc) == classes
        top = record.test_top_confusions  # the most frequent first, off the diagonal, every test image of its class
        assert 0 < len(top) <= 20 and [row[2] for row in top] == sorted((row[2] for row in top), reverse=True)
        assert all(true != predicted and of == 1 for true, predicted, _, of in top)

    report = run_module("bench.report", "--results-dir", str(results))
    assert report.returncode == 0, report.stderr[-3000:]
    weakest = pd.read_csv(results / "tables" / "weakest_classes.csv")
    assert set(weakest["dataset"]) == {"tiny_small", "imagenet64_small"} and weakest["confusion 1"].str.contains(" -> ").all()
    assert not list((results / "plots").glob("confusion_*"))  # no 1000 x 1000 picture
    assert "test top-5 %" in pd.read_csv(results / "tables" / "accuracy.csv").columns

    timed = run_module("data.throughput", *common, "--cache-dir", str(cache), "--pipelines", "train", "--min-seconds",
                       "0", "--batch-size", "50", "--max-images", "300", "--device", "cpu", "--workers", "1", env=env)
    assert timed.returncode == 0, timed.stderr[-3000:]
    rows = [line for line in timed.stdout.splitlines() if "| train " in line]
    assert [row.split("|")[1].strip() for row in rows] == ["tiny_small", "imagenet64_small"]
    assert all("quasi_random" in row for row in rows)
