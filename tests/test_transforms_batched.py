"""Batched on-device augmentation: contract, exactness against torchvision's functional ops with the
same parameters, and the distributions of its random parameters against the per-image reference."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup.data.datasets import default_datasets_dir
from selfsup.methods.byol import byol_views
from selfsup.methods.simclr import simclr_view
from selfsup.transforms import (
    BatchedViews,
    BatchedViewAugment,
    ViewConfig,
    view_transform,
)
from selfsup.transforms.batched import BRIGHTNESS, CONTRAST, HUE, SATURATION

DRAWS = 4096
SIGMAS = 5.0  # bounds of the statistical tests: false alarms about 1 in 10^6 per check

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_images(batch: int, channels: int = 3, height: int = 20, width: int = 24,
                  seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=generator)


def identity_config(size: int, **changes) -> ViewConfig:
    """Every random operation off and the crop the whole (square) image: the view is the image."""
    config = ViewConfig(crop_size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0,
                        jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0,
                        solarize_probability=0.0)
    return replace(config, **changes)


def normalized(images: torch.Tensor, config: ViewConfig) -> torch.Tensor:
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (images.float().expand(-1, 3, -1, -1) / 255 - mean) / std


def assert_rate(flags: torch.Tensor, probability: float, name: str) -> None:
    """A Bernoulli rate within SIGMAS binomial standard deviations."""
    n = flags.numel()
    rate = flags.float().mean().item()
    bound = SIGMAS * math.sqrt(probability * (1 - probability) / n) + 1e-12
    assert abs(rate - probability) <= bound, f"{name}: rate {rate:.4f}, expected {probability} +- {bound:.4f}"


def assert_uniform(values: torch.Tensor, low: float, high: float, name: str) -> None:
    """Values inside [low, high], with the mean and variance of the uniform distribution."""
    values = values.double()
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
    n = values.numel()
    mean_bound = SIGMAS * (high - low) / math.sqrt(12 * n)
    assert abs(values.mean().item() - (low + high) / 2) <= mean_bound, f"{name}: mean {values.mean():.4f}"
    # Var of the sample variance of a uniform: (b-a)^4 / 180 / n (excess kurtosis -6/5).
    var_bound = SIGMAS * (high - low) ** 2 / math.sqrt(180 * n)
    variance = values.var().item()
    assert abs(variance - (high - low) ** 2 / 12) <= var_bound, f"{name}: variance {variance:.5f}"


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical distributions of a and b."""
    a, b = a.double().sort().values, b.double().sort().values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return (cdf_a - cdf_b).abs().max().item()


def ks_bound(n: int, m: int, alpha: float = 1e-5) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


# ---------------------------------------------------------------------------------------------------
# Contract


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_device(device: str, channels: int) -> None:
    config = simclr_view(16, blur=True)
    views = BatchedViewAugment(config)(random_images(6, channels).to(device))
    assert views.shape == (6, 3, 16, 16)
    assert views.dtype == torch.float32
    assert views.device.type == device
    assert torch.isfinite(views).all()


def test_rejects_bad_input_with_a_clear_error() -> None:
    augment = BatchedViewAugment(simclr_view(16))
    with pytest.raises(TypeError, match="uint8"):
        augment(random_images(2).float())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment(random_images(2)[0])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


def test_every_image_draws_its_own_randomness() -> None:
    copies = random_images(1, height=32, width=32).expand(64, -1, -1, -1)
    views = BatchedViewAugment(simclr_view(32))(copies, torch.Generator().manual_seed(0))
    flat = views.flatten(1)
    distinct = torch.cdist(flat, flat) > 1e-3
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    assert distinct[off_diagonal].all(), "two images of the batch got the same view"


def test_seeded_call_repeats_and_the_two_views_differ() -> None:
    images = random_images(8, height=32, width=32)
    two_views = BatchedViews(*map(BatchedViewAugment, byol_views(32)))
    first = two_views(images, torch.Generator().manual_seed(3))
    again = two_views(images, torch.Generator().manual_seed(3))
    other = two_views(images, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])
    assert two_views.augments[0].config != two_views.augments[1].config  # BYOL's asymmetric pair


def test_two_view_recipes_mirror_the_per_image_ones() -> None:
    simclr = BatchedViews(BatchedViewAugment(simclr_view(96, strength=0.5)))
    assert simclr.augments[0].config == simclr.augments[1].config == simclr_view(96, strength=0.5)
    byol = BatchedViews(*map(BatchedViewAugment, byol_views(224)))
    assert (byol.augments[0].config, byol.augments[1].config) == byol_views(224)


# ---------------------------------------------------------------------------------------------------
# Exactness: the same parameters give torchvision's result (on float images)


def reference_view(image: torch.Tensor, config: ViewConfig, parameters, b: int) -> torch.Tensor:
    """One view by torchvision's functional ops, with the batch's parameters of image b."""
    x = image.float().expand(3, -1, -1) / 255
    x = TF.resized_crop(x, int(parameters.crop_top[b]), int(parameters.crop_left[b]),
                        int(parameters.crop_height[b]), int(parameters.crop_width[b]),
                        [config.crop_size, config.crop_size], antialias=True)
    if parameters.flip[b]:
        x = TF.horizontal_flip(x)
    if parameters.jitter[b]:
        operations = {BRIGHTNESS: (TF.adjust_brightness, parameters.brightness),
                      CONTRAST: (TF.adjust_contrast, parameters.contrast),
                      SATURATION: (TF.adjust_saturation, parameters.saturation),
                      HUE: (TF.adjust_hue, parameters.hue)}
        for operation in parameters.jitter_order[b].tolist():
            function, factors = operations[operation]
            x = function(x, float(factors[b]))
    if parameters.grayscale[b]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if parameters.blur[b]:
        x = TF.gaussian_blur(x, [config.blur_kernel_size] * 2, [float(parameters.blur_sigma[b])] * 2)
    if parameters.solarize[b]:
        x = TF.solarize(x, round(config.solarize_threshold * 255) / 255)
    return TF.normalize(x, list(config.mean), list(config.std))


@pytest.mark.parametrize("channels, height, width", [(3, 28, 30), (3, 32, 32), (1, 24, 20)])
def test_equals_torchvision_functional_ops_with_the_same_parameters(channels, height, width) -> None:
    config = ViewConfig(crop_size=32, blur_probability=0.5, solarize_probability=0.5,
                        grayscale_probability=0.3)
    augment = BatchedViewAugment(config)
    images = random_images(24, channels, height, width, seed=1)
    parameters = augment.sample_parameters(24, height, width, torch.Generator().manual_seed(2))
    views = augment.apply(images, parameters)
    for b in range(24):
        expected = reference_view(images[b], config, parameters, b)
        torch.testing.assert_close(views[b], expected, atol=1e-4, rtol=0, msg=f"image {b}")


# ---------------------------------------------------------------------------------------------------
# Probability 0 leaves an image alone, probability 1 changes it


@pytest.mark.parametrize("operation", ["flip", "jitter", "grayscale", "blur", "solarize", "crop"])
def test_each_operation_off_at_probability_zero_and_on_at_one(operation: str) -> None:
    size = 24
    images = random_images(16, height=size, width=size, seed=5)
    identity = identity_config(size)
    unchanged = BatchedViewAugment(identity)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(unchanged, normalized(images, identity), atol=1e-5, rtol=0)

    on = {"flip": dict(flip_probability=1.0), "jitter": dict(jitter_probability=1.0),
          "grayscale": dict(grayscale_probability=1.0),
          "blur": dict(blur_probability=1.0, blur_sigma=(1.0, 2.0)),  # sigma 0.1 hardly blurs
          "solarize": dict(solarize_probability=1.0), "crop": dict(crop_scale=(0.1, 0.5))}[operation]
    changed = BatchedViewAugment(identity_config(size, **on))(images, torch.Generator().manual_seed(0))
    difference = (changed - unchanged).flatten(1).abs().amax(dim=1)
    assert (difference > 0.05).all(), f"{operation} at probability 1 left some image unchanged"


# ---------------------------------------------------------------------------------------------------
# Distributions over many draws


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40), (12, 30)])
def test_crop_boxes_follow_torchvision_random_resized_crop(height: int, width: int) -> None:
    config = ViewConfig(crop_size=32)
    generator = torch.Generator().manual_seed(0)
    parameters = BatchedViewAugment(config).sample_parameters(DRAWS, height, width, generator)
    top, left = parameters.crop_top, parameters.crop_left
    crop_h, crop_w = parameters.crop_height, parameters.crop_width
    assert (crop_h >= 1).all() and (crop_w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + crop_h <= height).all() and (left + crop_w <= width).all()

    torch.manual_seed(0)
    reference = v2.RandomResizedCrop(32, scale=config.crop_scale, ratio=config.crop_ratio)
    boxes = [reference.make_params([torch.empty(3, height, width)]) for _ in range(DRAWS)]
    ref_h = torch.tensor([box["height"] for box in boxes])
    ref_w = torch.tensor([box["width"] for box in boxes])
    ref_top = torch.tensor([box["top"] for box in boxes])

    bound = ks_bound(DRAWS, DRAWS)
    area = (crop_h * crop_w).double() / (height * width)
    ref_area = (ref_h * ref_w).double() / (height * width)
    log_ratio, ref_log_ratio = (crop_w / crop_h).double().log(), (ref_w / ref_h).double().log()
    assert ks_statistic(area, ref_area) < bound, "crop area scale"
    assert ks_statistic(log_ratio, ref_log_ratio) < bound, "crop log aspect ratio"
    # The position: uniform over the free room, as torch.randint(0, room + 1).
    room, ref_room = height - crop_h, height - ref_h
    assert ks_statistic(top / room.clamp(min=1), ref_top / ref_room.clamp(min=1)) < bound, "crop top"


def test_jitter_factors_and_blur_sigma_are_uniform_on_torchvision_ranges() -> None:
    config = simclr_view(64, blur=True)
    p = BatchedViewAugment(config).sample_parameters(DRAWS, 8, 8, torch.Generator().manual_seed(1))
    assert_uniform(p.brightness, 0.2, 1.8, "brightness")
    assert_uniform(p.contrast, 0.2, 1.8, "contrast")
    assert_uniform(p.saturation, 0.2, 1.8, "saturation")
    assert_uniform(p.hue, -0.2, 0.2, "hue")
    assert_uniform(p.blur_sigma, *config.blur_sigma, "blur sigma")
    # torchvision clips the low end at 0: brightness 1.2 draws from [0, 2.2].
    strong = BatchedViewAugment(replace(config, brightness=1.2)).sample_parameters(
        DRAWS, 8, 8, torch.Generator().manual_seed(2))
    assert_uniform(strong.brightness, 0.0, 2.2, "brightness 1.2")


def test_jitter_order_is_a_uniform_random_permutation() -> None:
    p = BatchedViewAugment(simclr_view(32)).sample_parameters(DRAWS, 8, 8, torch.Generator().manual_seed(2))
    assert torch.equal(p.jitter_order.sort(dim=1).values, torch.arange(4).expand(DRAWS, 4))
    for position in range(4):
        for operation in range(4):
            assert_rate(p.jitter_order[:, position] == operation, 0.25, f"op {operation} at {position}")
    # All 24 orders occur, each about 1/24 of the time.
    codes = (p.jitter_order * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    counts = torch.bincount(codes, minlength=256)
    assert (counts > 0).sum() == 24
    assert_rate(codes == codes[0], 1 / 24, "one permutation")


@pytest.mark.parametrize("config", [byol_views(224)[0], byol_views(224)[1], simclr_view(224)],
                         ids=["byol-first", "byol-second", "simclr"])
def test_operation_rates_match_the_configured_probabilities(config: ViewConfig) -> None:
    p = BatchedViewAugment(config).sample_parameters(DRAWS, 8, 8, torch.Generator().manual_seed(3))
    assert_rate(p.flip, config.flip_probability, "flip")
    assert_rate(p.jitter, config.jitter_probability, "jitter")
    assert_rate(p.grayscale, config.grayscale_probability, "grayscale")
    assert_rate(p.blur, config.blur_probability, "blur")
    assert_rate(p.solarize, config.solarize_probability, "solarize")
    # The applied operations follow the same rates: a flipped crop of a left-right ramp decreases.
    ramp = torch.arange(8, dtype=torch.uint8).mul(30).expand(256, 3, 8, 8)
    images = BatchedViewAugment(identity_config(8, flip_probability=config.flip_probability))(ramp)
    decreasing = images[:, 0, 0, 0] > images[:, 0, 0, -1]
    assert_rate(decreasing, config.flip_probability, "applied flip")


# ---------------------------------------------------------------------------------------------------
# End to end against the per-image reference on real images


def cifar_images(count: int) -> torch.Tensor:
    folder = default_datasets_dir() / "cifar10" / "train"
    if not folder.is_dir():
        message = f"CIFAR-10 JPEGs not found at {folder} (set SELFSUP_DATASETS)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[: count // len(classes) + 1]][:count]
    return torch.stack([TF.pil_to_tensor(Image.open(f).convert("RGB")) for f in files])


@pytest.mark.parametrize("config", [simclr_view(32, blur=True), byol_views(32)[1]],
                         ids=["simclr-blur", "byol-second"])
def test_pixel_statistics_match_the_per_image_reference(config: ViewConfig) -> None:
    images = cifar_images(128)
    torch.manual_seed(0)
    reference_transform = view_transform(config)  # the slow side: one view per image
    reference = torch.stack([reference_transform(image) for image in images])
    batched = BatchedViewAugment(config)(images.repeat(16, 1, 1, 1), torch.Generator().manual_seed(0))
    for name, statistic in [("mean", lambda v: v.mean(dim=(2, 3))), ("std", lambda v: v.std(dim=(2, 3)))]:
        ours, theirs = statistic(batched), statistic(reference)  # (views, 3) per-view statistics
        standard_error = (ours.var(dim=0) / len(ours) + theirs.var(dim=0) / len(theirs)).sqrt()
        # The reference rounds to uint8 after each operation: allow that bias (2/255 on the 0-1 scale).
        quantization = 2 / 255 / torch.tensor(config.std)
        difference = (ours.mean(dim=0) - theirs.mean(dim=0)).abs()
        assert (difference <= SIGMAS * standard_error + quantization).all(), (
            f"per-channel {name}: batched {ours.mean(0)}, reference {theirs.mean(0)}, "
            f"bound {SIGMAS * standard_error + quantization}")
