"""Size and cost of each model (parameters, GFLOPs per image), measured rather than hand-derived.

FLOPs come from torch.utils.flop_counter on a model built on the meta device: shapes are all the
counter needs, so even VGG16 costs no memory or init time.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.registry import build_model, model_names

_BATCH = 2  # >1 so batch norm behaves as in training; FLOPs are linear in the batch.


@dataclass(frozen=True)
class ModelFacts:
    """Per-image cost of one model at one input shape."""

    params: int
    forward_gflops: float
    train_gflops: float  # forward + backward


def _count_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, train: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        loss = nn.functional.cross_entropy(model(images), labels)
        if train:
            loss.backward()
    return counter.get_total_flops()


@lru_cache(maxsize=None)
def model_facts(name: str, in_channels: int, image_size: int = 64, num_classes: int = 10) -> ModelFacts:
    """Parameters and forward / training GFLOPs per image of `name` on `in_channels` x image_size^2 input."""
    with torch.device("meta"):
        model = build_model(name, in_channels, num_classes)
        images = torch.empty(_BATCH, in_channels, image_size, image_size)
        labels = torch.zeros(_BATCH, dtype=torch.long)
    model.train()
    forward = _count_flops(model, images, labels, train=False)
    train = _count_flops(model, images, labels, train=True)
    return ModelFacts(
        params=sum(p.numel() for p in model.parameters()),
        forward_gflops=forward / _BATCH / 1e9,
        train_gflops=train / _BATCH / 1e9,
    )


def facts_table(in_channels_list: tuple[int, ...] = (1, 3)) -> pd.DataFrame:
    """One row per model: params and per-image forward / training GFLOPs for each input channel count."""
    rows = []
    for name in model_names():
        row: dict[str, object] = {"model": name}
        for c in in_channels_list:
            facts = model_facts(name, c)
            row[f"params ({c} ch)"] = facts.params
            row[f"forward GFLOPs ({c} ch)"] = facts.forward_gflops
            row[f"train GFLOPs ({c} ch)"] = facts.train_gflops
        rows.append(row)
    return pd.DataFrame(rows)
