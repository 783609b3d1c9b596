"""The model registry, in timm's manner: a decorated builder per model, carrying the model's metadata.

    @register_model(improves="resnet18", study={"mnist": StudyResult(99.63, 2319)})
    def resnet18_improved(in_channels: int, num_classes: int) -> nn.Module: ...

Everything else derives from the entries: the CLI's choices and defaults, the study's pairing of
recipes, the fast recipe's per-model learning rate, the default time-to-target goal, the report's
study columns and its vanilla-vs-improved table. A model outside this package registers the same way
(`bench/run.py --plugin my_module` imports it before the options are read).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from torch import nn

Builder = Callable[[int, int], nn.Module]  # (in_channels, num_classes) -> a freshly initialised model


@dataclass(frozen=True)
class StudyResult:
    """One number pair of the study's table (docs/STUDY.md): test accuracy % after its 50 epochs, and
    seconds of training on its Colab GPU (indicative only)."""

    test_acc_pct: float
    train_seconds: float


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Builder
    description: str
    improves: str | None = None  # the vanilla twin this model is the improved variant of
    fast_lr_scale: float = 1.0  # multiplier on the fast recipe's learning rate (VGG16 without BN needs less)
    study: Mapping[str, StudyResult] = field(default_factory=dict)  # dataset -> the study's numbers

    @property
    def is_improved(self) -> bool:
        return self.improves is not None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(*, improves: str | None = None, fast_lr_scale: float = 1.0,
                   study: Mapping[str, StudyResult] | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register `builder` under its function name with this metadata (docstring = description)."""

    def decorate(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if improves is not None and improves not in _REGISTRY:
            raise ValueError(f"model {name!r} improves {improves!r}, which is not registered (register it first)")
        description = (builder.__doc__ or name).strip().splitlines()[0]
        _REGISTRY[name] = ModelEntry(name, builder, description, improves, fast_lr_scale,
                                     MappingProxyType(dict(study or {})))
        return builder

    return decorate


def model_names() -> tuple[str, ...]:
    """Registered models in registration order: the study's six first, in its order, then plugins."""
    return tuple(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(_REGISTRY)}") from None


def study_result(model: str, dataset: str) -> StudyResult | None:
    """The study's numbers for this model on this dataset, or None (a model or dataset it never ran)."""
    entry = _REGISTRY.get(model)
    return entry.study.get(dataset) if entry else None


def study_datasets() -> tuple[str, ...]:
    """Datasets the study has numbers for, in first-mention order."""
    return tuple(dict.fromkeys(dataset for entry in _REGISTRY.values() for dataset in entry.study))


def _check_positive(option: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def build_model(name: str, in_channels: int, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model (no pretrained weights): (N, in_channels, 64, 64) -> (N, num_classes) logits."""
    entry = model_entry(name)
    _check_positive("in_channels", in_channels)
    _check_positive("num_classes", num_classes)
    return entry.build(in_channels, num_classes)
