"""Scaling, measured (#24): the communication levers as parts of a run's identity, the probe of what communication
costs after a run, `python -m bench.scaling` over process counts (real `accelerate launch`es, gloo on this CPU) and
the report's scaling table and plot. The path over machines runs on the local SLURM cluster (tests/test_slurm.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.suite.config import Communication, parse_suite
from bench.training.runtime import ddp_kwargs, unsupported
from helpers import TINY, records_in, run_bench

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


@pytest.mark.slow
def test_an_unsupported_lever_is_recorded_with_its_reason_not_dropped(tmp_path, cache_dir):
    done = run_bench(TINY + BASE + ["--epochs", "1", "--sync-bn"], tmp_path, cache_dir)
    assert done.returncode == 1  # the suite did not finish every run
    (record,) = records_in(tmp_path)
    assert record.status == "unsupported" and record.config["communication"]["sync_bn"] is True
    assert record.error.startswith("--sync-bn on cpu: torch's SyncBatchNorm synchronises CUDA tensors only")
    assert f"unsupported: {record.run_id} (--sync-bn on cpu" in done.stdout
