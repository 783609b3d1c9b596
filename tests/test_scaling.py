"""Scaling, measured (#24): the communication levers as parts of a run's identity, the probe of what communication
costs after a run, `python -m bench.scaling` over process counts (real `accelerate launch`es, gloo on this CPU) and
the report's scaling table and plot. The path over machines runs on the local SLURM cluster (tests/test_slurm.py)."""
from __future__ import annotations

import dataclasses
import statistics

import pandas as pd
import pytest
import torch

import bench.scaling
from bench.reporting.scaling import bound, verdict
from bench.scaling import build_parser, first_lines, main as scaling_main, plan
from bench.suite.config import Communication, parse_suite
from bench.suite.recipes import RECIPES
from bench.training.runtime import build_model_and_optimizer, ddp_kwargs, unsupported
from helpers import TINY, records_in, run_bench, run_module

BASE = ["--models", "resnet18", "--datasets", "mnist"]
LEVERS = [["--comm-hook", "fp16"], ["--comm-hook", "bf16"], ["--comm-hook", "power_sgd"],
          ["--comm-hook", "power_sgd", "--powersgd-rank", "4"], ["--bucket-cap-mb", "100"],
          ["--gradient-as-bucket-view"], ["--static-graph"], ["--sync-bn"]]


def test_each_lever_is_part_of_a_runs_identity_and_the_defaults_keep_the_old_ids():
    (plain,) = parse_suite(BASE, gpu_available=True, num_processes=8).runs
    explicit = parse_suite(BASE + ["--comm-hook", "no"], gpu_available=True, num_processes=8).runs[0]
    assert explicit.run_id == plain.run_id  # the default hook named is the default
    ids = {plain.run_id}
    for lever in LEVERS:
        (run,) = parse_suite(BASE + lever, gpu_available=True, num_processes=8).runs
        assert run.run_id not in ids, lever
        ids.add(run.run_id)
        # Only what differs from the defaults is hashed: each lever's run keeps its id when a later default is added.
        assert run.communication.identity() and plain.communication.identity() == {}
    assert dataclasses.replace(plain, communication=Communication()).run_id == plain.run_id


def test_the_levers_reach_ddp_through_accelerates_kwargs_handler():
    (run,) = parse_suite(BASE + ["--comm-hook", "power_sgd", "--powersgd-rank", "4", "--bucket-cap-mb", "50",
                                 "--gradient-as-bucket-view", "--static-graph"], gpu_available=True,
                         num_processes=2).runs
    handler = ddp_kwargs(run.communication)
    # What Accelerate passes to DistributedDataParallel, and the hook and state it registers on it.
    assert handler.to_kwargs() == {"bucket_cap_mb": 50, "gradient_as_bucket_view": True, "static_graph": True}
    assert handler.comm_hook.value == "power_sgd" and handler.comm_state_option["matrix_approximation_rank"] == 4
    assert ddp_kwargs(Communication()).to_kwargs() == {}  # the defaults: DDP as Accelerate builds it


def test_a_powersgd_rank_without_a_powersgd_hook_is_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_suite(BASE + ["--comm-hook", "fp16", "--powersgd-rank", "2"], gpu_available=True, num_processes=2)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("bench/run.py: error: argument --powersgd-rank: the rank is PowerSGD's; "
                                       "expected --comm-hook power_sgd or batched_power_sgd with it, got --comm-hook "
                                       "fp16\n")


def test_what_a_cpu_cannot_run_is_said_and_what_it_can_is_not():
    cpu = torch.device("cpu")
    assert "SyncBatchNorm synchronises CUDA tensors only" in unsupported(Communication(sync_bn=True), cpu)
    assert "NCCL only" in unsupported(Communication(comm_hook="power_sgd", powersgd_rank=1), cpu)
    for runs in (Communication(), Communication(comm_hook="fp16"), Communication(comm_hook="bf16"),
                 Communication(bucket_cap_mb=1, gradient_as_bucket_view=True, static_graph=True)):
        assert unsupported(runs, cpu) is None


def test_sync_bn_converts_every_batch_norm_before_ddp_wraps_the_model():
    """The conversion itself runs anywhere (torch refuses only the synchronisation of CPU tensors)."""
    def norms(sync_bn: bool) -> set[type]:
        model, _ = build_model_and_optimizer("resnet18", 1, 10, torch.device("cpu"), channels_last=False,
                                             sync_bn=sync_bn)
        return {type(module) for module in model.modules()
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)}

    assert norms(True) == {torch.nn.SyncBatchNorm} and norms(False) == {torch.nn.BatchNorm2d}


@pytest.mark.slow
def test_an_unsupported_lever_is_recorded_with_its_reason_not_dropped(tmp_path, cache_dir):
    done = run_bench(TINY + BASE + ["--epochs", "1", "--sync-bn"], tmp_path, cache_dir)
    assert done.returncode == 1  # the suite did not finish every run
    (record,) = records_in(tmp_path)
    assert record.status == "unsupported" and record.config["communication"]["sync_bn"] is True
    assert record.error.startswith("--sync-bn on cpu: torch's SyncBatchNorm synchronises CUDA tensors only")
    assert f"unsupported: {record.run_id} (--sync-bn on cpu" in done.stdout


# ----- python -m bench.scaling: the plan -------------------------------------------------------------------------

def planned(argv: list[str]):
    args, runner_args = build_parser().parse_known_args(argv)
    return plan(args, runner_args)


def test_weak_scaling_keeps_the_batch_per_process_and_scales_the_lr_with_the_global_batch(tmp_path):
    study = planned(["--processes", "4", "1", "2", "--preset", "fast", *BASE, "--results-dir", str(tmp_path)])
    assert [(point.world, point.batch_size) for point in study.points] == [(1, 512), (2, 512), (4, 512)]
    for point in study.points:
        (run,) = point.runs
        assert run.world_size == point.world and run.global_batch == 512 * point.world
        assert run.peak_lr == RECIPES["fast"].lr_for("resnet18", run.global_batch)  # the recipe's linear rule
        assert "--batch-size" in point.runner_args(study.runner_args) and "--resume" in point.runner_args(())
    lines = first_lines(study)
    assert lines[0].startswith("weak scaling of 1 run(s) over 1 process, 2 processes, 4 processes: per-process "
                               "batch 512, the global batch growing; recipe fast scales its lr linearly")
    assert lines[1:4] == ["  1 process: global batch 512 (512 x 1 process), peak lr 0.2",
                          "  2 processes: global batch 1024 (512 x 2 processes), peak lr 0.4",
                          "  4 processes: global batch 2048 (512 x 4 processes), peak lr 0.8"]


def test_the_plan_resolves_a_presets_bf16_as_each_launch_will_on_a_cpu_that_would_emulate_it(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.scaling, "cpu_has_native_bf16", lambda: False)
    argv = ["--preset", "fast", *BASE, "--results-dir", str(tmp_path)]
    study = planned(["--processes", "1", "2", *argv])
    launched = {point.world: parse_suite(argv, gpu_available=False, num_processes=point.world, native_bf16=False).runs
                for point in study.points}  # as bench.run resolves them in each launch on such a CPU
    assert {point.world: point.runs for point in study.points} == launched
    assert {run.precision for point in study.points for run in point.runs} == {"no"}


def test_strong_scaling_splits_one_global_batch(tmp_path):
    study = planned(["--mode", "strong", "--processes", "1", "2", "4", "--preset", "paper", *BASE,
                     "--results-dir", str(tmp_path)])
    assert [(point.world, point.batch_size) for point in study.points] == [(1, 128), (2, 64), (4, 32)]
    assert {run.global_batch for point in study.points for run in point.runs} == {128}
    assert {run.peak_lr for point in study.points for run in point.runs} == {RECIPES["paper-vanilla"].lr}


@pytest.mark.parametrize("argv, expected", [
    (["--mode", "strong", "--global-batch", "10", "--processes", "1", "2", "3"],
     "--global-batch 10: 3 processes cannot split it evenly; expected a multiple of every process count (1, 2, 3)"),
    (["--processes", "1", "2", "--machines", "2"], "--processes and --machines: one axis per study; expected one of "
     "them (with --machines, --gpus-per-node sets the processes on each machine)"),
    (["--global-batch", "64"], "--global-batch: the global batch is fixed by strong scaling only; expected --mode "
     "strong"),
    (["--comm-hook", "fp16", "--powersgd-rank", "2"], "--powersgd-rank: the rank is PowerSGD's; expected --comm-hook "
     "power_sgd or batched_power_sgd among the hooks"),
])
def test_a_study_that_cannot_run_stops_with_one_line_before_anything_runs(tmp_path, capsys, argv, expected):
    results = tmp_path / "results"
    assert scaling_main([*argv, *BASE, "--preset", "smoke", "--results-dir", str(results)]) == 2
    assert capsys.readouterr().err == f"python -m bench.scaling: error: {expected}\n"
    assert not results.exists()  # nothing launched, nothing written


def test_the_levers_are_swept_as_a_product_each_value_a_launch_of_its_own(tmp_path):
    study = planned(["--comm-hook", "no", "fp16", "--sync-bn", "both", "--bucket-cap-mb", "5", *BASE,
                     "--preset", "smoke", "--results-dir", str(tmp_path)])
    assert [point.levers for point in study.points[::2]] == [
        ("--bucket-cap-mb", "5"), ("--bucket-cap-mb", "5", "--sync-bn"), ("--comm-hook", "fp16", "--bucket-cap-mb", "5"),
        ("--comm-hook", "fp16", "--bucket-cap-mb", "5", "--sync-bn")]
    assert [point.world for point in study.points] == [1, 2] * 4  # every combination at every size
    ids = [run.run_id for point in study.points for run in point.runs]
    assert len(set(ids)) == len(ids) == 8


# ----- python -m bench.scaling on this machine: one launch of 1 process, one of 2 (gloo) -------------------------

# 107 training images in batches of 16: 6 steps on one process, 3 on each of two, the first untimed; DDP's options
# that run on gloo, a short communication probe (3 repeats of one step each way), and a target of 1 % that a point
# reaches unless its validation scores none of its 21 images (either is a result the table must show).
STUDY = TINY + ["--synthetic-size", "128", "21", "--num-workers", "1", "--no-inference", *BASE, "--epochs", "1",
                "--comm-hook", "fp16", "--bucket-cap-mb", "1", "--gradient-as-bucket-view", "--static-graph",
                "--comm-probe-repeats", "3", "--comm-probe-steps", "1", "--target-accuracy", "0.01"]


@pytest.fixture(scope="module")
def weak_study(tmp_path_factory, cache_dir):
    results = tmp_path_factory.mktemp("scaling")
    done = run_module("bench.scaling", "--processes", "1", "2", "--mode", "weak", *STUDY, "--results-dir",
                      str(results), "--cache-dir", str(cache_dir), env={"PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return results, done.stdout


def median(values: list[float]) -> float:
    return statistics.median(values)


@pytest.mark.slow
def test_each_point_is_an_ordinary_run_with_its_levers_and_lr(weak_study):
    results, _ = weak_study
    one, two = sorted(records_in(results), key=lambda record: record.world_size)
    assert (one.world_size, two.world_size) == (1, 2) and one.status == two.status == "finished"
    for record in (one, two):
        assert record.config["communication"] == {"comm_hook": "fp16", "powersgd_rank": None, "bucket_cap_mb": 1,
                                                  "gradient_as_bucket_view": True, "static_graph": True,
                                                  "sync_bn": False}
        assert record.metrics["peak_lr"] == pytest.approx(RECIPES["fast"].lr_for("resnet18",
                                                                                  record.global_batch_size))
    assert one.comm_probe is None and one.metrics["exposed_comm_ms"] is None  # one process: nothing to exchange
    assert one.env["link"]["backend"] is None and two.env["link"]["backend"] == "gloo"


@pytest.mark.slow
def test_exposed_communication_and_bandwidth_are_what_the_probe_timed(weak_study):
    results, _ = weak_study
    two = max(records_in(results), key=lambda record: record.world_size)
    probe, metrics = two.comm_probe, two.metrics
    assert probe["repeats"] == 3 and len(probe["synced_step_ms"]) == len(probe["no_sync_step_ms"]) == 2  # per rank
    synced = [max(rank[repeat] for rank in probe["synced_step_ms"]) for repeat in range(3)]
    unsynced = [max(rank[repeat] for rank in probe["no_sync_step_ms"]) for repeat in range(3)]
    exposed = [with_sync - without for with_sync, without in zip(synced, unsynced)]
    assert metrics["exposed_comm_ms"] == pytest.approx(median(exposed))  # negative on a loaded CPU is a result too
    assert metrics["exposed_comm_std_ms"] == pytest.approx(statistics.stdev(exposed))
    assert metrics["exposed_comm_share"] == pytest.approx(median(exposed) / median(synced))
    # Gradient bytes as computed, and the fp16 hook's half on the wire.
    assert metrics["grad_bytes"] == two.facts["params"] * 4 and metrics["wire_bytes"] == metrics["grad_bytes"] // 2
    # nccl-tests' bandwidths from the all-reduces' own bytes and seconds: algbw = bytes / time, busbw = algbw x 2(n-1)/n.
    for name, nbytes in (("bucket", 2**20), ("grad", metrics["grad_bytes"])):
        timed = probe["all_reduce"][name]
        assert timed["bytes"] == nbytes and len(timed["seconds"]) == 3
        algbw = nbytes / median(timed["seconds"]) / 1e9
        assert metrics[f"{name}_algbw_gbs"] == pytest.approx(algbw) and algbw > 0
        assert metrics[f"{name}_busbw_gbs"] == pytest.approx(algbw * 2 * (2 - 1) / 2)


@pytest.mark.slow
def test_the_report_has_the_scaling_table_and_plot(weak_study):
    results, _ = weak_study
    one, two = sorted(records_in(results), key=lambda record: record.world_size)
    table = pd.read_csv(results / "tables" / "scaling.csv")
    assert list(table["world size"]) == [1, 2] and set(table["series"]) == {1} and set(table["mode"]) == {"weak"}
    speed_up = two.metrics["train_images_per_s"] / one.metrics["train_images_per_s"]
    assert list(table["speed-up x"]) == pytest.approx([1.0, speed_up])
    assert list(table["efficiency %"]) == pytest.approx([100.0, speed_up / 2 * 100])
    assert table["exposed comm %"].iloc[1] == pytest.approx(two.metrics["exposed_comm_share"] * 100)
    report = (results / "REPORT.md").read_text()
    title = "### resnet18, mnist (synthetic data), "
    assert "## Scaling" in report and title in report and "weak scaling over processes, 16 per process" in report
    assert f"efficiency {speed_up * 50:.0f} % at 2 processes." in report
    assert (results / "plots" / "scaling_resnet18_mnist_synthetic.png").stat().st_size > 0



@pytest.mark.slow
def test_time_to_target_and_its_speed_up_are_the_records_own(weak_study):
    results, _ = weak_study
    one, two = sorted(records_in(results), key=lambda record: record.world_size)
    table = pd.read_csv(results / "tables" / "scaling.csv")
    report = (results / "REPORT.md").read_text()
    for record, row in zip((one, two), table.itertuples(index=False)):
        seconds = record.metrics["time_to_target_s"]
        assert getattr(row, "reached") == f"{int(seconds is not None)}/1"
        if seconds is None:  # a larger global batch that did not get there is said, not averaged away
            assert "not reached (0/1)" in report
        else:
            assert row[list(table.columns).index("to target s")] == pytest.approx(seconds)
    if one.metrics["time_to_target_s"] and two.metrics["time_to_target_s"]:
        assert table["to-target speed-up x"].iloc[1] == pytest.approx(
            one.metrics["time_to_target_s"] / two.metrics["time_to_target_s"])


def test_a_series_is_called_bound_only_beyond_its_spread():
    def point(size, share, std, stall):
        return {"size": size, "world_size": size, "n": 1, "exposed_comm_share": share, "exposed_comm_std_ms": std,
                "comm_step_ms": 100.0, "data_stall": stall, "efficiency": 100.0 / size ** 0.5, "axis": "processes"}

    rows = pd.DataFrame([point(1, None, None, 1.0), point(2, 12.0, 5.0, 1.0), point(4, 30.0, 4.0, 1.0),
                         point(8, 45.0, 2.0, 15.0)])
    rows["bound"] = [bound(row) for _, row in rows.iterrows()]
    # 12 % +- 2 x 5 % may be under 10 %; 30 - 8 and 45 - 4 are not; a 15 % data stall is the input's.
    assert list(rows["bound"]) == ["compute", "unclear", "communication", "communication, input"]
    assert verdict(rows) == "communication-bound from 4 processes; input-bound from 8 processes; efficiency 35 % at 8 processes."
    rows["bound"] = ["compute", "compute", "unclear", "unclear"]
    assert verdict(rows).startswith("Not communication- or input-bound beyond the measured spread")
