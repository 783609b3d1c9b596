"""Option resolution, run identity and measurement helpers (pure functions, no training)."""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from bench.measuring.device import GPU_PEAKS, datasheet_peak, peak_tflops, uses_cuda_graphs
from bench.measuring.measure import WindowTimer, peak_memory_bytes, reset_peak_memory, time_to_target
from bench.suite.config import parse_suite
from bench.suite.plan import batch_warnings, suite_line
from bench.suite.recipes import RECIPES
from bench.suite.shards import run_cost
from bench.training.loop import make_schedule
from models import study_result


def test_auto_preset_is_smoke_without_gpu_and_fast_with_one():
    smoke = parse_suite(["--models", "resnet18"], gpu_available=False, num_processes=1)
    fast = parse_suite(["--models", "resnet18"], gpu_available=True, num_processes=1)
    assert smoke.runs[0].preset == "smoke" and "preset auto -> smoke" in smoke.notes[0] and smoke.runs[0].synthetic
    assert fast.runs[0].preset == "fast" and not fast.runs[0].synthetic and fast.runs[0].precision == "bf16"
    assert [run.dataset for run in smoke.runs] == ["mnist", "cifar10"]  # the study's datasets by default


def test_paper_preset_pairs_recipes_and_targets_the_study():
    suite = parse_suite(["--preset", "paper", "--datasets", "cifar10"], gpu_available=True, num_processes=1)
    recipes = {run.model: run.recipe.name for run in suite.runs}
    assert recipes["vgg16"] == "paper-vanilla" and recipes["vgg16_improved"] == "paper-improved"
    for run in suite.runs:
        assert run.epochs == 50 and run.batch_size == 128
        assert run.target_accuracy == pytest.approx(study_result(run.model, "cifar10").test_acc_pct / 100)


def test_cli_overrides_preset_and_recipe_can_be_ablated():
    (run,) = parse_suite(["--preset", "paper", "--models", "resnet18", "--datasets", "mnist", "--recipe",
                          "paper-improved", "--epochs", "3", "--batch-size", "64", "--precision", "bf16",
                          "--target-accuracy", "97.5"], gpu_available=False, num_processes=1).runs
    assert (run.recipe.name, run.epochs, run.batch_size, run.precision) == ("paper-improved", 3, 64, "bf16")
    assert run.target_accuracy == pytest.approx(0.975)


def test_study_recipes_split_their_global_batch_across_processes():
    runs = parse_suite(["--preset", "paper", "--models", "resnet18"], gpu_available=True, num_processes=4).runs
    assert {run.batch_size for run in runs} == {32} and {run.world_size for run in runs} == {4}
    with pytest.raises(SystemExit, match="cannot split evenly"):
        parse_suite(["--preset", "paper", "--models", "resnet18"], gpu_available=True, num_processes=3)


def test_fast_recipe_scales_learning_rate_with_global_batch():
    fast = RECIPES["fast"]
    assert fast.lr_for("resnet18", 1024) == pytest.approx(2 * fast.lr_for("resnet18", 512))
    assert fast.lr_for("vgg16", 512) == pytest.approx(0.1 * fast.lr_for("resnet18", 512))
    assert RECIPES["paper-improved"].lr_for("resnet18", 4096) == 0.01  # the study's rate, never rescaled


def test_the_first_line_states_global_batch_and_lr_and_warns_beyond_the_checked_batch():
    """Eight GPUs and no Accelerate config: the fast preset at 512 per process is a global 4096 at lr 1.6."""
    eight = parse_suite(["--preset", "fast", "--models", "resnet18", "vgg16"], gpu_available=True, num_processes=8)
    line = suite_line(eight, 8, "cuda")
    assert line.startswith("4 run(s), 8 process(es) on cuda, global batch 4096 (512 x 8 processes), peak lr 1.6 "
                           "(vgg16: 0.16), precision bf16") and "set by options" not in line
    (warning,) = batch_warnings(eight.runs)
    assert warning.startswith("warning: global batch 4096 is beyond the 512 that recipe fast was checked at "
                              "(the learning rate scaled linearly with it)")
    one = parse_suite(["--preset", "fast", "--models", "resnet18"], gpu_available=True, num_processes=1)
    assert batch_warnings(one.runs) == [] and "global batch 512 (512 x 1 process), peak lr 0.2," in suite_line(one, 1, "cuda")
    paper = parse_suite(["--preset", "paper", "--models", "resnet18", "--batch-size", "128"], gpu_available=True,
                        num_processes=4)
    (warning,) = batch_warnings(paper.runs)
    assert "global batch 512 is beyond the 128 that recipe paper-vanilla" in warning and "unscaled" in warning
    assert "set by options: --batch-size 128" in suite_line(paper, 4, "cuda")


def test_run_id_names_what_changes_results_and_nothing_else():
    argv = ["--models", "resnet18", "--datasets", "mnist"]
    (run,) = parse_suite(argv, gpu_available=False, num_processes=1).runs
    how = ["--num-workers", "7", "--warmup-steps", "99", "--data-dir", "/elsewhere", "--checkpoint-minutes", "0",
           "--no-inference", "--price-per-hour", "3", "--results-dir", "/tmp/x", "--resume", "--profile"]
    elsewhere = parse_suite(argv + how, gpu_available=False, num_processes=1)
    assert elsewhere.runs == (run,) and elsewhere.context.warmup_steps == 99  # the context changed, the runs did not
    for change in ({"world_size": 2}, {"seed": 1}, {"batch_size": 8}, {"precision": "bf16"}, {"epochs": 9}):
        assert dataclasses.replace(run, **change).run_id != run.run_id, change


@pytest.mark.parametrize("argv, processes, machines, run_ids", [
    (["--models", "resnet18", "--datasets", "mnist"], 1, 1, ["fast_mnist_resnet18_fast_bf16_b512_s0_b506ae81fe"]),
    (["--preset", "fast", "--models", "vgg16_improved", "--datasets", "cifar10", "--compile", "reduce-overhead",
      "--seeds", "3", "--eval-every", "50", "--stop-at-target"], 8, 2,
     ["fast_cifar10_vgg16_improved_fast_bf16_b512_s3_36af4367bb"]),
    (["--preset", "paper", "--models", "inception_v1"], 1, 1,
     ["paper_mnist_inception_v1_paper-vanilla_no_b128_s0_39722522ca",
      "paper_cifar10_inception_v1_paper-vanilla_no_b128_s0_ce2d39f1c3"]),
])
def test_run_ids_are_the_ones_earlier_versions_gave(argv, processes, machines, run_ids):
    """Run ids name records and checkpoints on disk: these were computed by the harness before the run context was
    split off the configuration (December 2026), and must not change."""
    suite = parse_suite(argv, gpu_available=True, num_processes=processes, num_machines=machines)
    assert [run.run_id for run in suite.runs] == run_ids


def test_the_loader_order_is_part_of_the_identity_and_every_earlier_run_id_stays():
    args = ["--models", "resnet18", "--datasets", "mnist", "tiny_imagenet", "--preset", "fast"]
    (mnist, tiny) = parse_suite(args, gpu_available=False, num_processes=1).runs
    assert mnist.loader_order == tiny.loader_order == "random"  # this machine holds both files in its page cache
    (earlier,) = parse_suite(["--models", "resnet18", "--datasets", "mnist"], gpu_available=False, num_processes=1).runs
    assert earlier.run_id == "smoke_mnist-synthetic_resnet18_fast_no_b32_s0_3a1fba9d86"  # its id before the order existed
    squeezed = parse_suite([*args, "--loader-memory", "0.5"], gpu_available=False, num_processes=1)
    (small, big) = squeezed.runs
    assert small.run_id == mnist.run_id and (big.loader_order, small.loader_order) == ("quasi_random", "random")
    assert big.run_id != tiny.run_id == dataclasses.replace(big, loader_order="random").run_id
    assert squeezed.loader_notes == (
        "loader: mnist's train split (about 0.21 GB): it fits in the 0.5 GB the loader may use: page cache, random order",
        "loader: tiny_imagenet's train split (about 1.12 GB): it exceeds the 0.5 GB the loader may use: read a few pages "
        "at a time, in quasi-random order, without the page cache")
    (distributed,) = parse_suite(["--models", "resnet18", "--datasets", "tiny_imagenet", "--preset", "fast",
                                  "--loader-memory", "0.5"],
                                 gpu_available=True, num_processes=2).runs
    assert distributed.loader_order == "random"  # ffcv's quasi-random order raises in distributed mode


def test_synthetic_sizes_grow_with_the_classes_and_epochs_go_command_line_then_dataset_then_preset():
    def resolved(*args: str) -> dict:
        suite = parse_suite(["--models", "resnet18", "--datasets", "mnist", "tiny_imagenet", "imagenet64", *args],
                            gpu_available=False, num_processes=1)
        return {run.dataset: (run.synthetic_train, run.synthetic_test, run.epochs) for run in suite.runs}

    # smoke: 640 + 128 images, at least 4 + 1 of each class; the smoke preset's 2 epochs
    assert resolved() == {"mnist": (640, 128, 2), "tiny_imagenet": (800, 200, 2), "imagenet64": (4000, 1000, 2)}
    assert resolved("--synthetic-size", "300", "50")["imagenet64"][:2] == (300, 50)  # as asked (and then refused)
    fast = resolved("--preset", "fast")  # the entries' fast epochs over the recipe's 12
    assert [epochs for *_, epochs in fast.values()] == [12, 16, 8]
    assert [epochs for *_, epochs in resolved("--preset", "fast", "--epochs", "3").values()] == [3, 3, 3]
    assert [epochs for *_, epochs in resolved("--preset", "paper").values()] == [50, 50, 50]


def test_time_to_target_counts_training_seconds_until_first_hit():
    history = [{"epoch": 1, "train_time_s": 10.0, "elapsed_s": 16.0, "val_acc": 0.5},
               {"epoch": 2, "train_time_s": 12.0, "elapsed_s": 30.0, "val_acc": 0.9},
               {"epoch": 3, "train_time_s": 11.0, "elapsed_s": 43.0, "val_acc": 0.95}]
    assert time_to_target(history, 0.9) == (22.0, 30.0, 2)  # training seconds; wall clock with evaluation
    assert time_to_target(history, 0.99) == (None, None, None)
    assert time_to_target(history, None) == (None, None, None)


def test_warmup_is_a_tenth_of_the_run_capped_at_an_epoch():
    def warmup(epochs: int, steps_per_epoch: int) -> int:
        (run,) = parse_suite(["--models", "resnet18", "--datasets", "mnist", "--epochs", str(epochs)],
                             gpu_available=False, num_processes=1).runs
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=run.recipe.lr_for("resnet18", 512))
        scheduler, per_step, warm = make_schedule(optimizer, run, steps_per_epoch)
        assert per_step and run.recipe.name == "fast"
        rates = [scheduler.get_last_lr()[0]]
        for _ in range(warm + 2):
            optimizer.step()
            scheduler.step()
            rates.append(scheduler.get_last_lr()[0])
        assert rates[:warm + 1] == sorted(rates[:warm + 1]) and max(rates) == pytest.approx(0.2)  # rises to the peak
        return warm

    assert warmup(1, 100) == 10  # a one-epoch run warms up for a tenth of it, not all of it
    assert warmup(5, 100) == 50
    assert warmup(12, 100) == 100  # capped at one epoch
    assert warmup(50, 3) == 3


def test_window_timer_counts_only_inside_the_window():
    timer = WindowTimer(torch.device("cpu"))
    timer.count(100)  # before start: ignored
    with timer.waiting_for_data():
        time.sleep(0.01)
    timer.start()
    timer.count(32)
    with timer.waiting_for_data():
        time.sleep(0.05)
    timer.stop()
    assert timer.images == 32 and timer.seconds >= timer.data_wait_s >= 0.05
    assert timer.data_wait_s < 0.06 + 0.05  # only the wait inside the window
    assert timer.images_per_s == pytest.approx(32 / timer.seconds)


@pytest.mark.parametrize("name, mode, expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", (989.4, "H100")),
    ("NVIDIA H100 PCIe", "bf16", (756.0, "H100 PCIe")),
    ("NVIDIA H100 PCIe", "tf32", (378.0, "H100 PCIe")),
    ("NVIDIA H100 NVL", "bf16", (835.0, "H100 NVL")),
    ("NVIDIA H200", "bf16", (989.4, "H200")),
    ("NVIDIA H200 NVL", "bf16", (835.0, "H200 NVL")),  # not the SXM part's 989
    ("NVIDIA GH200 480GB", "bf16", (989.4, "GH200")),  # not read as H200
    ("NVIDIA H800", "bf16", (989.4, "H800")),
    ("NVIDIA H800 PCIe", "fp32", (51.2, "H800 PCIe")),
    ("NVIDIA B200", "bf16", (2250.0, "B200")),
    ("NVIDIA A100-SXM4-80GB", "bf16", (312.0, "A100")),
    ("NVIDIA A100-PCIE-40GB", "tf32", (156.0, "A100")),
    ("NVIDIA A100 80GB PCIe", "fp16", (312.0, "A100")),
    ("NVIDIA A10", "bf16", (125.0, "A10")),
    ("NVIDIA A10G", "bf16", (70.0, "A10G")),
    ("NVIDIA L4", "fp16", (121.0, "L4")),
    ("NVIDIA L40S", "fp16", (362.05, "L40S")),
    ("NVIDIA L40", "bf16", (181.05, "L40")),
    ("NVIDIA GeForce RTX 4090", "bf16", (165.2, "RTX 4090")),
    ("Tesla V100-SXM2-16GB", "fp16", (125.0, "V100")),
    ("Tesla T4", "fp32", (8.1, "T4")),
    ("Tesla V100-SXM2-16GB", "bf16", None),  # no bf16 on a V100: no made-up peak
    ("NVIDIA GH100X", "bf16", None),  # a key inside another word does not match
])
def test_datasheet_peaks_match_whole_device_names_most_specific_first(name, mode, expected):
    found = datasheet_peak(name, mode)
    if expected is None:
        assert found is None
        return
    tflops, source = found
    assert tflops == expected[0] and source.startswith(f"datasheet {expected[1]} {mode}: ")
    assert source.removeprefix(f"datasheet {expected[1]} {mode}: ") == GPU_PEAKS[expected[1]].source


def test_datasheet_entries_are_dense_rates_in_the_order_tensor_cores_allow():
    """Every entry is a dense rate: the tensor-core modes in the order bf16 = fp16 >= tf32, and fp32 never above
    tf32 (a sparse figure copied by mistake would double one of them)."""
    for key, peak in GPU_PEAKS.items():
        rates = peak.tflops
        assert rates.get("bf16", rates["fp16"]) == rates["fp16"] >= rates.get("tf32", 0), key
        assert rates["fp32"] <= rates.get("tf32", rates["fp16"]), key


def test_cpu_peak_memory_resets_between_runs():
    device = torch.device("cpu")
    big = torch.ones(64 * 2**20)  # 256 MiB
    high = peak_memory_bytes(device)[0]
    del big
    reset_peak_memory(device)
    assert peak_memory_bytes(device)[0] < high - 128 * 2**20


def test_shards_split_a_suite_disjointly_and_by_cost():
    args = ["--preset", "paper", "--seeds", "0", "1"]
    full = parse_suite(args, gpu_available=True, num_processes=1).runs
    parts = [parse_suite(args + ["--shard", f"{i}/3"], gpu_available=True, num_processes=1).runs for i in (1, 2, 3)]
    ids = [run.run_id for part in parts for run in part]
    assert sorted(ids) == sorted(run.run_id for run in full) and len(set(ids)) == len(ids)  # disjoint, complete
    for part in parts:  # each part keeps the suite's order
        assert [run.run_id for run in part] == [run.run_id for run in full if run in part]
    costs = [sum(run_cost(run) for run in part) for part in parts]
    biggest = max(run_cost(run) for run in full)
    assert max(costs) - min(costs) <= biggest  # LPT: no part exceeds another by more than one run
    assert len({len(part) for part in parts}) > 1  # balanced by cost, not by count (VGG16 runs cost ~8x)
    again = parse_suite(args + ["--shard", "2/3"], gpu_available=True, num_processes=1).runs
    assert again == parts[1]


def test_a_name_or_seed_given_twice_is_one_run():
    suite = parse_suite(["--models", "resnet18", "vgg16", "resnet18", "--datasets", "mnist", "mnist",
                         "--seeds", "0", "0", "1"], gpu_available=False, num_processes=1)
    assert [(run.model, run.seed) for run in suite.runs] == [("resnet18", 0), ("resnet18", 1), ("vgg16", 0), ("vgg16", 1)]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "2", "1/3/5"])
def test_bad_shard_is_one_line(text, capsys):
    with pytest.raises(SystemExit):
        parse_suite(["--shard", text], gpu_available=False, num_processes=1)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected I/N with 1 <= I <= N" in err


@pytest.mark.parametrize("argv, gpu, native, expected, note", [
    (["--preset", "fast"], False, False, "no", "would be emulated on this CPU"),
    (["--preset", "fast"], False, True, "bf16", "computes bf16 natively"),
    (["--preset", "fast", "--precision", "bf16"], False, False, "bf16", None),  # an explicit choice is obeyed
    (["--preset", "fast"], True, False, "bf16", None),
    (["--preset", "smoke"], False, False, "no", None),
])
def test_presets_choose_bf16_on_a_cpu_only_where_it_is_native(argv, gpu, native, expected, note):
    suite = parse_suite(argv + ["--models", "resnet18"], gpu_available=gpu, num_processes=1, native_bf16=native)
    assert {run.precision for run in suite.runs} == {expected}
    precision_notes = [line for line in suite.notes if line.startswith("precision")]
    assert len(precision_notes) == (1 if note else 0) and all(note in line for line in precision_notes)


def test_a_cpu_has_no_peak_and_so_no_mfu():
    """A matmul rate measured on a shared CPU is no upper bound (it gave an MFU of 106 %): no peak, no MFU."""
    cpu = torch.device("cpu")
    for precision in ("no", "bf16"):
        assert peak_tflops(cpu, precision) == (None, "none: no trustworthy peak on a CPU")


@pytest.mark.parametrize("mode, graphs", [(None, False), ("default", False), ("reduce-overhead", True),
                                          ("max-autotune", True), ("max-autotune-no-cudagraphs", False)])
def test_every_compile_mode_that_replays_cuda_graphs_marks_its_steps(mode, graphs):
    """max-autotune records CUDA graphs too: unmarked, its steps after the first validation re-record them."""
    assert uses_cuda_graphs(mode, torch.device("cuda")) is graphs
    assert uses_cuda_graphs(mode, torch.device("cpu")) is False
