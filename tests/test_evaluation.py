"""Evaluation through a real run (bench/training/loop.py `evaluate`): the model sees only the batch shapes training
used, so that cuDNN autotunes no new shape inside the peak-memory window, and eval img/s counts real images only."""
from __future__ import annotations

import pytest

from helpers import TINY, plugin_env, records_in, run_bench

# A plugin model that logs the batch size of every forward pass, with the mode it ran in (meta tensors, counted for
# FLOPs, are not passes over data).
RECORDING_MODEL = '''
import os

from torch import nn

from models import register_model


class Recording(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if not x.is_meta:
            with open(os.environ["BATCH_LOG"], "a") as log:
                log.write(f"{'train' if self.training else 'eval'} {x.shape[0]}\\n")
        return self.inner(x)


@register_model()
def recording_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """A small CNN that logs each batch size it sees."""
    return Recording(nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten(), nn.Linear(8, num_classes)))
'''


@pytest.mark.slow
def test_evaluation_presents_only_batch_sizes_that_training_used(tmp_path, cache_dir):
    # 64 synthetic train+val images (54 train, 10 val) and 21 test images at batch 16: training drops its partial
    # batch (16 only); validation's one batch of 10 and the test's last of 5 are padded to 16. Eager, on the CPU.
    log = tmp_path / "batches.log"
    env = {**plugin_env(tmp_path, "recording", RECORDING_MODEL), "BATCH_LOG": str(log)}
    done = run_bench([*TINY, "--plugin", "recording", "--models", "recording_cnn", "--datasets", "mnist",
                      "--no-inference"], tmp_path / "results", cache_dir, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records_in(tmp_path / "results")
    assert record.status == "finished" and record.config["compile_mode"] is None
    seen: dict[str, list[int]] = {"train": [], "eval": []}
    for line in log.read_text().splitlines():
        mode, size = line.split()
        seen[mode].append(int(size))
    epochs = len(record.history)
    assert set(seen["train"]) == {16} and len(seen["train"]) == 3 * epochs
    assert set(seen["eval"]) <= set(seen["train"])
    assert len(seen["eval"]) == epochs + 2  # a validation batch per epoch, then two test batches
    # Eval img/s counts the real images only: rate x seconds is the 10 validation images, not the padded 16.
    for row in record.history:
        assert row["eval_images_per_s"] * row["eval_time_s"] == pytest.approx(10)
