"""The six models of the study behind one registry: names used by the CLI, results and tables."""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.inception import inception_v1, inception_v1_improved
from models.resnet import resnet18, resnet18_improved
from models.vgg import vgg16, vgg16_improved

_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "vgg16": vgg16,
    "vgg16_improved": vgg16_improved,
    "resnet18": resnet18,
    "resnet18_improved": resnet18_improved,
    "inception_v1": inception_v1,
    "inception_v1_improved": inception_v1_improved,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def _check_positive(option: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def build_model(name: str, in_channels: int, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model (no pretrained weights) that maps (N, in_channels, 64, 64) to (N, num_classes) logits."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODEL_NAMES)}")
    _check_positive("in_channels", in_channels)
    _check_positive("num_classes", num_classes)
    return _BUILDERS[name](in_channels, num_classes)


__all__ = ["MODEL_NAMES", "build_model"]
