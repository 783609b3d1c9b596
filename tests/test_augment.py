"""Device preprocessing and batched augmentation (data/augment.py), checked on CPU.

The geometry and colour maths are compared with torchvision's own functional ops; the random ops
are checked for their ranges and rates on synthetic probe images with fixed generator seeds.
(No timing asserts: a CIFAR batch of 512 takes well under a second on CPU, showing there are no
per-sample Python loops.)
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from data.augment import (
    AffineParams,
    AugmentConfig,
    DevicePreprocess,
    JitterParams,
    affine_theta,
    apply_color_jitter,
    color_jitter,
    random_affine,
    random_hflip,
    sample_affine,
    sample_color_jitter,
)
from data.datasets import get_spec
from data.errors import DataError

MNIST_PAPER_AUG = get_spec("mnist").augmentation("paper")
CIFAR10_PAPER_AUG = get_spec("cifar10").augmentation("paper")

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
SIZE = 64
CENTRE = (SIZE - 1) / 2  # pixel-index coordinate of the image centre


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _uint8_batch(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, SIZE, SIZE, channels), dtype=torch.uint8, generator=_gen(seed))


def _plain_normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _probe(n: int, rows: slice, cols: slice) -> torch.Tensor:
    """n copies of a black (1, 64, 64) image with one white rectangle."""
    x = torch.zeros(n, 1, SIZE, SIZE)
    x[:, :, rows, cols] = 1.0
    return x


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image mass, centroid (x, y) and principal-axis angle in degrees of (B, 1, H, W) images."""
    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=x.dtype), torch.arange(SIZE, dtype=x.dtype), indexing="ij")
    w = x[:, 0]
    mass = w.sum(dim=(1, 2))
    cx, cy = (w * xs).sum(dim=(1, 2)) / mass, (w * ys).sum(dim=(1, 2)) / mass
    dx, dy = xs - cx.view(-1, 1, 1), ys - cy.view(-1, 1, 1)
    mu20, mu02, mu11 = (w * dx * dx).sum(dim=(1, 2)), (w * dy * dy).sum(dim=(1, 2)), (w * dx * dy).sum(dim=(1, 2))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))
    return mass, cx, cy, angle


# --- configs -----------------------------------------------------------------------------------


def test_paper_configs_follow_spec() -> None:
    assert MNIST_PAPER_AUG == AugmentConfig(degrees=15, translate=(0.1, 0.1), scale=(0.8, 1.2))
    assert CIFAR10_PAPER_AUG == AugmentConfig(
        degrees=10, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10,
        hflip_p=0.5, brightness=0.2, contrast=0.2, saturation=0.2, separate_rotation=True,
    )
    assert AugmentConfig().is_identity
    assert not MNIST_PAPER_AUG.is_identity and not CIFAR10_PAPER_AUG.is_identity
    assert MNIST_PAPER_AUG.has_affine and not MNIST_PAPER_AUG.has_color_jitter
    assert not AugmentConfig(hflip_p=0.5).is_identity


@pytest.mark.parametrize(
    "kwargs, option",
    [({"scale": (1.2, 0.8)}, "scale"), ({"hflip_p": 1.5}, "hflip_p"), ({"degrees": -1}, "degrees"),
     ({"translate": (0.1, 2.0)}, "translate"), ({"shear": 90}, "shear"), ({"contrast": -0.1}, "contrast")],
)
def test_bad_config_names_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=f"AugmentConfig.{option} must be"):
        AugmentConfig(**kwargs)


# --- normalisation and output format -----------------------------------------------------------


@pytest.mark.parametrize("augment", [None, AugmentConfig()])
def test_identity_is_exactly_plain_normalisation(augment: AugmentConfig | None) -> None:
    images = _uint8_batch(8, 3)
    out = DevicePreprocess(CIFAR_MEAN, CIFAR_STD, augment=augment)(images, generator=_gen(0))
    assert torch.equal(out, DevicePreprocess(CIFAR_MEAN, CIFAR_STD)(images))
    assert torch.equal(out, _plain_normalise(images, CIFAR_MEAN, CIFAR_STD))


def test_normalisation_per_channel_on_constant_images() -> None:
    values = (10, 128, 250)
    images = torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, 3).expand(2, SIZE, SIZE, 3).contiguous()
    out = DevicePreprocess(CIFAR_MEAN, CIFAR_STD)(images)
    for c, v in enumerate(values):
        expected = (v / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], expected), atol=1e-6)
    mnist = DevicePreprocess(MNIST_MEAN, MNIST_STD)(torch.full((2, SIZE, SIZE, 1), 255, dtype=torch.uint8))
    assert torch.allclose(mnist, torch.full_like(mnist, (1 - 0.1307) / 0.3081), atol=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    "channels, augment", [(3, None), (3, CIFAR10_PAPER_AUG), (1, None), (1, MNIST_PAPER_AUG)]
)
def test_output_dtype_shape_device_and_layout(
    channels: int, augment: AugmentConfig | None, channels_last: bool
) -> None:
    mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else (MNIST_MEAN, MNIST_STD)
    images = _uint8_batch(4, channels)
    out = DevicePreprocess(mean, std, augment=augment, channels_last=channels_last)(images, generator=_gen(0))
    assert out.dtype == torch.float32 and out.shape == (4, channels, SIZE, SIZE) and out.device == images.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    if channels == 3:  # with one channel both layouts have the same strides
        assert out.stride() == torch.empty(out.shape).contiguous(memory_format=fmt).stride()


@pytest.mark.cuda
def test_runs_on_cuda_without_host_syncs() -> None:
    images = _uint8_batch(16, 3).cuda()
    prep = DevicePreprocess(CIFAR_MEAN, CIFAR_STD, augment=CIFAR10_PAPER_AUG, channels_last=True)
    first = prep(images, _gen(3, "cuda"))  # also copies mean/std to the device, once
    generator = _gen(3, "cuda")
    torch.cuda.set_sync_debug_mode("error")  # any .item()/nonzero/blocking copy now raises
    try:
        second = prep(images, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first.device == images.device and first.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(first, second)


def test_bad_batches_raise_data_error() -> None:
    prep = DevicePreprocess(CIFAR_MEAN, CIFAR_STD)
    for bad in (torch.zeros(2, SIZE, SIZE, 3), torch.zeros(2, SIZE, SIZE, 1, dtype=torch.uint8),
                torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)):
        with pytest.raises(DataError, match=r"expected a uint8 batch shaped \(B, H, W, 3\)"):
            prep(bad)
    with pytest.raises(ValueError, match="one value per channel"):
        DevicePreprocess(CIFAR_MEAN, MNIST_STD)
    with pytest.raises(ValueError, match="generator is on cpu, images on meta"):
        prep(torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8, device="meta"), generator=_gen(0))


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channels, augment", [(3, CIFAR10_PAPER_AUG), (1, MNIST_PAPER_AUG)]
)
def test_same_seed_same_output_different_seed_different(channels: int, augment: AugmentConfig) -> None:
    mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else (MNIST_MEAN, MNIST_STD)
    prep = DevicePreprocess(mean, std, augment=augment)
    images = _uint8_batch(16, channels)
    assert torch.equal(prep(images, _gen(7)), prep(images, _gen(7)))
    assert not torch.equal(prep(images, _gen(7)), prep(images, _gen(8)))


# --- horizontal flip ---------------------------------------------------------------------------


def test_flip_rate_is_p_and_flips_are_exact_mirrors() -> None:
    x = torch.rand(2000, 3, 8, 8, generator=_gen(1))
    out = random_hflip(x, AugmentConfig(hflip_p=0.5), _gen(2))
    flipped = (out == x.flip(-1)).all(dim=(1, 2, 3))
    unchanged = (out == x).all(dim=(1, 2, 3))
    assert (flipped ^ unchanged).all()  # each image is either itself or its exact mirror
    assert abs(flipped.float().mean().item() - 0.5) < 0.05  # 4.5 sigma at n = 2000, fixed seed
    assert torch.equal(random_hflip(x, AugmentConfig(hflip_p=0.0), _gen(2)), x)
    assert torch.equal(random_hflip(x, AugmentConfig(hflip_p=1.0), _gen(2)), x.flip(-1))


# --- geometry ----------------------------------------------------------------------------------


def test_sampled_geometry_follows_torchvision_get_params() -> None:
    """angle ~ U(-deg, deg); shift = round(U(-t * W, t * W)) (x) and with H (y); scale ~ U; x-shear ~ U."""
    n, height, width = 4000, 32, 64  # not square, so x and y ranges differ
    p = sample_affine(CIFAR10_PAPER_AUG, n, height, width, device=torch.device("cpu"), generator=_gen(0))
    for values, bound in ((p.angle, 10.0), (p.shear, 10.0)):
        assert values.abs().max() <= bound and values.min() < -0.99 * bound and values.max() > 0.99 * bound
        assert abs(values.mean().item()) < 0.3  # centred; sd of the mean is about 0.09
    assert p.scale.min() >= 0.8 and p.scale.max() <= 1.2 and p.scale.min() < 0.81 and p.scale.max() > 1.19
    tx, ty = p.translate[:, 0], p.translate[:, 1]
    assert torch.equal(p.translate, p.translate.round())
    assert set(tx.int().tolist()) == set(range(-6, 7))  # round(U(-6.4, 6.4))
    assert set(ty.int().tolist()) == set(range(-3, 4))  # round(U(-3.2, 3.2))
    mnist = sample_affine(MNIST_PAPER_AUG, n, SIZE, SIZE, device=torch.device("cpu"), generator=_gen(0))
    assert mnist.shear.eq(0).all() and mnist.angle.abs().max() <= 15 and mnist.angle.abs().max() > 14.9


def test_zero_range_affine_changes_nothing() -> None:
    x = torch.rand(8, 3, SIZE, SIZE, generator=_gen(0))
    assert torch.equal(random_affine(x, AugmentConfig(), _gen(0)), x)


def test_translation_is_whole_pixels_within_ten_percent() -> None:
    blob = _probe(1000, slice(31, 33), slice(31, 33))  # 2x2 blob centred on the image centre
    mass, cx, cy, _ = _moments(random_affine(blob, AugmentConfig(translate=(0.1, 0.1)), _gen(0)))
    assert torch.equal(mass, torch.full_like(mass, 4.0))  # moved intact, never resampled
    for shift in (cx - CENTRE, cy - CENTRE):
        assert torch.equal(shift, shift.round())  # torchvision rounds the sampled shift
        assert shift.abs().max() <= 0.1 * SIZE
        assert set(shift.int().tolist()) == set(range(-6, 7))  # round(U(-6.4, 6.4)) covers -6..6


@pytest.mark.parametrize(
    "cfg, probe_rows, probe_cols, bound",
    [
        (AugmentConfig(degrees=15), slice(31, 33), slice(12, 52), 15),  # horizontal bar: its tilt is the angle
        (AugmentConfig(shear=10), slice(12, 52), slice(31, 33), 10),  # vertical bar: x-shear tilts it
    ],
)
def test_rotation_and_shear_stay_within_bounds_about_the_centre(
    cfg: AugmentConfig, probe_rows: slice, probe_cols: slice, bound: float
) -> None:
    bar = _probe(500, probe_rows, probe_cols)
    out = random_affine(bar, cfg, _gen(0))
    if probe_rows.stop - probe_rows.start > probe_cols.stop - probe_cols.start:
        out = out.transpose(-1, -2)  # measure the vertical bar's tilt as a horizontal one
    _, cx, cy, angle = _moments(out)
    assert angle.abs().max() <= bound + 1.0  # +1 degree for nearest-neighbour pixelation
    assert angle.abs().max() >= bound - 2.0 and angle.min() < 0 < angle.max()  # the range is used
    assert (cx - CENTRE).abs().max() < 0.5 and (cy - CENTRE).abs().max() < 0.5  # about the centre


def test_scale_stays_within_bounds_and_fills_black() -> None:
    square = _probe(500, slice(24, 40), slice(24, 40))  # 16x16, centred
    mass, *_ = _moments(random_affine(square, AugmentConfig(scale=(0.8, 1.2)), _gen(0)))
    ratio = mass.sqrt() / 16
    assert ratio.min() >= 0.8 - 1 / 16 and ratio.max() <= 1.2 + 1 / 16  # one pixel of pixelation
    assert ratio.min() < 0.85 and ratio.max() > 1.15
    shrunk = random_affine(torch.ones(2, 3, SIZE, SIZE), AugmentConfig(scale=(0.8, 0.8)), _gen(0))
    assert shrunk[..., :6, :].eq(0).all() and shrunk[..., 26:38, 26:38].eq(1).all()  # fill 0 outside


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode=mode, align_corners=False)


PARAMS = [(7.0, (3.0, -2.0), 1.1, 0.0), (-12.0, (0.0, 5.0), 0.85, 0.0), (4.0, (-6.0, 6.0), 1.0, 0.0)]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_affine_theta_matches_torchvision_affine(mode: str) -> None:
    """Without shear, one matrix is torchvision's RandomAffine (whose angle runs the other way)."""
    x = torch.rand(len(PARAMS), 3, SIZE, SIZE, generator=_gen(0))
    params = AffineParams(*(torch.tensor(v) for v in zip(*PARAMS)))
    out = _warp(x, affine_theta(params, SIZE, SIZE), mode)
    for i, (a, (tx, ty), s, sh) in enumerate(PARAMS):
        # RandomAffine passes fill 0 explicitly; with bilinear torchvision then re-weights edge
        # pixels by a resampled mask, so that mode is compared with plain zero padding (fill None).
        ref = TF.affine(x[i], angle=-a, translate=[int(tx), int(ty)], scale=s, shear=[sh, 0.0],
                        interpolation=InterpolationMode(mode), fill=[0.0] * 3 if mode == "nearest" else None)
        if mode == "bilinear":
            assert torch.allclose(out[i], ref, atol=1e-4)
        else:
            assert (out[i] != ref).float().mean() < 1e-3  # nearest: at most a rare rounding tie differs


def test_affine_theta_is_rotate_then_sheared_affine() -> None:
    """The composed matrix equals torchvision's two passes F.rotate then F.affine (angle 0, shear).

    Bilinear warps reproduce a linear ramp exactly, so the centre of a coordinate-ramp image shows
    where each output pixel sampled from, through one pass or two.
    """
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    ramp = torch.stack((xs, ys)).unsqueeze(0)
    for a, (tx, ty), s, sh in [(8.0, (3.0, -2.0), 1.1, 9.0), (-10.0, (-4.0, 1.0), 0.9, -10.0)]:
        params = AffineParams(torch.tensor([a]), torch.tensor([[tx, ty]]), torch.tensor([s]), torch.tensor([sh]))
        theta = affine_theta(params, SIZE, SIZE)
        rotated = TF.rotate(ramp, a, interpolation=InterpolationMode.BILINEAR)
        ref = TF.affine(rotated, angle=0.0, translate=[int(tx), int(ty)], scale=s, shear=[sh, 0.0],
                        interpolation=InterpolationMode.BILINEAR)
        centre = (..., slice(20, 44), slice(20, 44))
        assert torch.allclose(_warp(ramp, theta, "bilinear")[centre], ref[centre], atol=1e-3)


def test_separate_rotation_is_torchvision_rotate_then_affine_per_sample() -> None:
    """CIFAR-10's recipe: RandomRotation, then RandomAffine; the corners the rotation drops stay black."""
    cfg = AugmentConfig(degrees=10, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10, separate_rotation=True)
    x = torch.rand(6, 3, SIZE, SIZE, generator=_gen(3))
    out = random_affine(x, cfg, _gen(4))
    params = sample_affine(cfg, 6, SIZE, SIZE, device=x.device, generator=_gen(4))
    for i in range(6):
        a, (tx, ty), s, sh = (params.angle[i].item(), params.translate[i].tolist(), params.scale[i].item(),
                              params.shear[i].item())
        rotated = TF.rotate(x[i], a, interpolation=InterpolationMode.NEAREST, fill=[0.0] * 3)
        ref = TF.affine(rotated, angle=0.0, translate=[int(tx), int(ty)], scale=s, shear=[sh, 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=[0.0] * 3)
        assert (out[i] != ref).float().mean() < 2e-3  # nearest: at most a rare rounding tie differs
    assert CIFAR10_PAPER_AUG.separate_rotation and not MNIST_PAPER_AUG.separate_rotation


# --- colour jitter -----------------------------------------------------------------------------

_TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
Probe = Callable[[torch.Tensor], torch.Tensor]  # jittered probe batch -> per-sample factor it shows


@pytest.mark.parametrize("channels", [3, 1])
def test_apply_color_jitter_matches_torchvision_in_every_order(channels: int) -> None:
    orders = torch.tensor(list(itertools.permutations(range(3))))
    factors = torch.rand(len(orders), 3, generator=_gen(0)) + 0.5  # [0.5, 1.5): exercises the clamp
    x = torch.rand(len(orders), channels, 16, 16, generator=_gen(1))
    out = apply_color_jitter(x, JitterParams(factors, orders))
    for i, order in enumerate(orders.tolist()):
        ref = x[i]
        for op in order:
            ref = _TV_OPS[op](ref, factors[i, op].item())
        assert torch.allclose(out[i], ref, atol=1e-6)


def _bright_probe() -> tuple[torch.Tensor, Probe]:
    x = torch.full((2000, 3, 4, 4), 0.5)
    return x, lambda out: out[:, 0, 0, 0] / 0.5


def _contrast_probe() -> tuple[torch.Tensor, Probe]:
    x = torch.full((2000, 3, 4, 4), 0.4)
    x[..., 2:] = 0.6  # grey, half 0.4 and half 0.6: contrast scales the step about the mean
    return x, lambda out: (out[:, 0, 0, 3] - out[:, 0, 0, 0]) / 0.2


def _saturation_probe() -> tuple[torch.Tensor, Probe]:
    x = torch.tensor([0.6, 0.4, 0.5]).view(1, 3, 1, 1).repeat(2000, 1, 4, 4)
    return x, lambda out: (out[:, 0, 0, 0] - out[:, 1, 0, 0]) / 0.2  # gray stays, colour spread scales


@pytest.mark.parametrize(
    "cfg, probe",
    [(AugmentConfig(brightness=0.2), _bright_probe), (AugmentConfig(contrast=0.2), _contrast_probe),
     (AugmentConfig(saturation=0.2), _saturation_probe)],
    ids=["brightness", "contrast", "saturation"],
)
def test_jitter_factor_is_uniform_in_range(cfg: AugmentConfig, probe: Callable[[], tuple[torch.Tensor, Probe]]) -> None:
    x, factor_of = probe()
    factor = factor_of(color_jitter(x, cfg, _gen(0)))
    assert factor.min() >= 0.8 - 1e-5 and factor.max() <= 1.2 + 1e-5
    assert factor.min() < 0.81 and factor.max() > 1.19
    assert abs(factor.mean().item() - 1.0) < 0.01  # about 4 sigma of the mean of U(0.8, 1.2), n = 2000
    assert abs(factor.std().item() - 0.4 / math.sqrt(12)) < 0.01  # uniform, not concentrated


def test_jitter_order_is_a_uniform_random_permutation_per_sample() -> None:
    cfg = AugmentConfig(brightness=0.2)
    params = sample_color_jitter(cfg, 3000, device=torch.device("cpu"), generator=_gen(0))
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(3).expand(3000, 3))
    counts = torch.unique(params.order, dim=0, return_counts=True)[1]
    assert len(counts) == 6 and (counts / 3000 - 1 / 6).abs().max() < 0.03  # 4.4 sigma each
    assert params.factors[:, 1:].eq(1).all()  # zero ranges give factor exactly 1
    x = torch.rand(3000, 3, 4, 4, generator=_gen(1))
    assert torch.equal(color_jitter(x, cfg, _gen(0)), apply_color_jitter(x, params))


def test_jitter_output_stays_in_unit_range_and_zero_range_is_a_no_op() -> None:
    x = torch.rand(256, 3, 16, 16, generator=_gen(0))
    x[:8] = 1.0
    x[8:16] = 0.0
    for cfg in (CIFAR10_PAPER_AUG, AugmentConfig(brightness=0.9, contrast=0.9, saturation=0.9)):
        out = color_jitter(x, cfg, _gen(1))
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(color_jitter(x, AugmentConfig(), _gen(1)), x)
