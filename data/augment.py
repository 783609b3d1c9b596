"""Batched, on-device preprocessing: uint8 BHWC batches -> augmented, normalised float32 BCHW, in whole-batch tensor
ops with no host sync (airbench style), matching torchvision's transforms where a recipe follows the study's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from data.errors import DataError

INTERPOLATION = "nearest"  # torchvision's default for RandomAffine/RandomRotation (see module docstring)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale for tensors


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentations; every field at its default means "off"."""

    degrees: float = 0
    translate: tuple[float, float] = (0, 0)
    scale: tuple[float, float] = (1, 1)
    shear: float = 0
    hflip_p: float = 0
    brightness: float = 0
    contrast: float = 0
    saturation: float = 0
    # The rotation as its own RandomRotation before a RandomAffine (CIFAR-10's recipe): two resamplings,
    # so what the rotation moves out of the frame stays black, exactly as torchvision does.
    separate_rotation: bool = False

    def __post_init__(self) -> None:
        checks = {
            "degrees": (0 <= self.degrees <= 180, "in [0, 180]"),
            "translate": (len(self.translate) == 2 and all(0 <= t <= 1 for t in self.translate), "(x, y) in [0, 1]"),
            "scale": (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], "(low, high) with 0 < low <= high"),
            "shear": (0 <= self.shear < 90, "in [0, 90)"),
            "hflip_p": (0 <= self.hflip_p <= 1, "a probability in [0, 1]"),
            "brightness": (self.brightness >= 0, ">= 0"),
            "contrast": (self.contrast >= 0, ">= 0"),
            "saturation": (self.saturation >= 0, ">= 0"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"AugmentConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def has_affine(self) -> bool:
        return bool(self.degrees or any(self.translate) or tuple(self.scale) != (1, 1) or self.shear)

    @property
    def has_color_jitter(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)

    @property
    def is_identity(self) -> bool:
        """True when no augmentation would change any image."""
        return not (self.has_affine or self.hflip_p or self.has_color_jitter)


def _uniform(u: Tensor, low: float, high: float) -> Tensor:
    """Map U(0, 1) draws to U(low, high) the way torch's ``uniform_`` does."""
    return low + (high - low) * u


def _per_sample(values: Tensor) -> Tensor:
    """Shape (B,) -> (B, 1, 1, 1) so it broadcasts over a BCHW batch."""
    return values.view(-1, 1, 1, 1)


def random_hflip(x: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image of a (B, C, H, W) batch left-right with probability ``cfg.hflip_p``."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < cfg.hflip_p
    return torch.where(_per_sample(flip), x.flip(-1), x)


class AffineParams(NamedTuple):
    """Per-sample geometry, shapes (B,) except ``translate`` (B, 2): degrees, pixels (x, y), factor, degrees."""

    angle: Tensor
    translate: Tensor
    scale: Tensor
    shear: Tensor


def sample_affine(
    cfg: AugmentConfig,
    batch: int,
    height: int,
    width: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> AffineParams:
    """Draw per-sample parameters the way torchvision's RandomRotation/RandomAffine ``get_params`` do."""
    u = torch.rand(batch, 5, device=device, generator=generator)
    max_dx, max_dy = cfg.translate[0] * width, cfg.translate[1] * height
    return AffineParams(
        angle=_uniform(u[:, 0], -cfg.degrees, cfg.degrees),
        translate=torch.stack((_uniform(u[:, 1], -max_dx, max_dx), _uniform(u[:, 2], -max_dy, max_dy)), dim=-1).round(),
        scale=_uniform(u[:, 3], cfg.scale[0], cfg.scale[1]),
        shear=_uniform(u[:, 4], -cfg.shear, cfg.shear),
    )


def affine_theta(params: AffineParams, height: int, width: int) -> Tensor:
    """Per-sample ``F.affine_grid`` matrices (B, 2, 3): ``F.rotate(angle)``, then ``F.affine`` with angle 0.

    The matrices map output to input positions (torchvision's inverse matrices) in the normalised
    coordinates of ``align_corners=False``, which is exactly torchvision's tensor grid.
    """
    rot, sh = torch.deg2rad(params.angle), torch.deg2rad(params.shear)
    cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(sh)
    scale = params.scale
    # inverse(rotate) @ inverse(shear-scale), in centred pixel coordinates
    m00, m01 = cos / scale, (cos * tan - sin) / scale
    m10, m11 = sin / scale, (sin * tan + cos) / scale
    tx, ty = params.translate[:, 0], params.translate[:, 1]
    t0, t1 = -(m00 * tx + m01 * ty), -(m10 * tx + m11 * ty)
    # centred pixels -> normalised [-1, 1]: x / (W / 2), y / (H / 2)
    row0 = torch.stack((m00, m01 * height / width, t0 * 2 / width), dim=-1)
    row1 = torch.stack((m10 * width / height, m11, t1 * 2 / height), dim=-1)
    return torch.stack((row0, row1), dim=1)


def warp(x: Tensor, params: AffineParams) -> Tensor:
    """One batched resampling of a (B, C, H, W) batch with per-sample geometry, fill 0."""
    theta = affine_theta(params, x.shape[2], x.shape[3]).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=INTERPOLATION, padding_mode="zeros", align_corners=False)


def random_affine(x: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """Rotate, shear, scale and translate each image of a (B, C, H, W) float batch, fill 0: one
    resampling, or two (rotation first) when ``cfg.separate_rotation``."""
    batch, _, height, width = x.shape
    params = sample_affine(cfg, batch, height, width, device=x.device, generator=generator)
    if not (cfg.separate_rotation and cfg.degrees):
        return warp(x, params)
    zeros, ones = torch.zeros_like(params.angle), torch.ones_like(params.scale)
    rotated = warp(x, AffineParams(params.angle, torch.zeros_like(params.translate), ones, zeros))
    return warp(rotated, params._replace(angle=zeros))


def _grayscale(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of a (B, 1 or 3, H, W) batch, with torchvision's weights."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


class JitterParams(NamedTuple):
    """Per-sample colour jitter: ``factors`` (B, 3) for brightness, contrast, saturation (1 = unchanged);
    row b of ``order`` (B, 3) is a permutation of 0, 1, 2, the sequence in which sample b gets them."""

    factors: Tensor
    order: Tensor


def sample_color_jitter(
    cfg: AugmentConfig, batch: int, *, device: torch.device, generator: torch.Generator | None = None
) -> JitterParams:
    """Factors ~ U(max(0, 1 - v), 1 + v) (a zero range gives exactly 1) and a random order, per sample."""
    u = torch.rand(batch, 6, device=device, generator=generator)
    ranges = (cfg.brightness, cfg.contrast, cfg.saturation)
    factors = torch.stack([_uniform(u[:, i], max(0.0, 1.0 - v), 1.0 + v) for i, v in enumerate(ranges)], dim=-1)
    return JitterParams(factors=factors, order=u[:, 3:].argsort(dim=-1))


def apply_color_jitter(x: Tensor, params: JitterParams) -> Tensor:
    """Adjust brightness, contrast, saturation of a [0, 1] (B, C, H, W) batch with given per-sample parameters.

    All three are torchvision's blend ``clamp(f * x + (1 - f) * other, 0, 1)`` with ``other`` = 0
    (brightness), the grayscale mean (contrast) or the grayscale image (saturation), so each step is
    one batched blend with a per-sample ``other``. A 1-channel image is its own grayscale, so
    saturation leaves it unchanged, as torchvision does.
    """
    factors, order = params
    for step in range(order.shape[1]):
        which = order[:, step : step + 1]
        factor = _per_sample(factors.gather(1, which).to(x.dtype))
        gray = _grayscale(x)
        which = _per_sample(which)
        other = torch.where(which == 0, 0.0, torch.where(which == 1, gray.mean(dim=(1, 2, 3), keepdim=True), gray))
        x = torch.lerp(other, x, factor).clamp_(0, 1)  # = f * x + (1 - f) * other, exact at f = 1
    return x


def color_jitter(x: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """Random brightness/contrast/saturation of a [0, 1] batch, in a random order per sample."""
    return apply_color_jitter(x, sample_color_jitter(cfg, x.shape[0], device=x.device, generator=generator))


class DevicePreprocess:
    """uint8 (B, H, W, C) batch on the training device -> augmented, normalised float32 (B, C, H, W).

    Build one with ``augment`` for training and one without for evaluation. Output is in
    ``torch.channels_last`` memory format when ``channels_last`` is set, contiguous NCHW otherwise.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentConfig | None = None,
        channels_last: bool = False,
    ) -> None:
        if len(mean) != len(std) or not mean:
            raise ValueError(f"DevicePreprocess: mean and std need one value per channel, got {mean!r} and {std!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"DevicePreprocess: std values must be > 0, got {std!r}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.augment = None if augment is None or augment.is_identity else augment
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _stats_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(1, C, 1, 1) mean and std on ``device``, copied there once rather than on every batch."""
        if device not in self._stats:
            self._stats[device] = tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return self._stats[device]

    def _check(self, images: Tensor, generator: torch.Generator | None) -> None:
        channels = len(self.mean)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != channels:
            raise DataError(
                f"DevicePreprocess: expected a uint8 batch shaped (B, H, W, {channels}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if generator is not None and generator.device != images.device and not (
                generator.device.type == images.device.type == "cuda"
                and generator.device.index in (None, images.device.index)):
            raise ValueError(f"DevicePreprocess: generator is on {generator.device}, images on {images.device}")

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check(images, generator)
        # BHWC -> BCHW is a view with channels_last strides; .float() keeps them.
        x = images.permute(0, 3, 1, 2).float() / 255
        cfg = self.augment
        if cfg is not None:
            if cfg.hflip_p:
                x = random_hflip(x, cfg, generator)
            if cfg.has_affine:
                x = random_affine(x, cfg, generator)
            if cfg.has_color_jitter:
                x = color_jitter(x, cfg, generator)
        mean, std = self._stats_on(x.device)
        return ((x - mean) / std).contiguous(memory_format=self.memory_format)
