"""The per-image view pipeline: inputs, each random op in isolation, randomness, and the paper recipes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.methods.byol import byol_views
from selfsup.methods.simclr import simclr_view
from selfsup.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MultiViewTransform,
    ViewConfig,
    eval_transform,
    view_transform,
)

SIDE = 24


def _random_image(channels: int = 3, height: int = SIDE, width: int = SIDE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=generator)


def _identity_config(**changes) -> ViewConfig:
    """A view that does nothing (whole-image crop at the same size, every probability 0) but ``changes``."""
    identity = ViewConfig(crop_size=SIDE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0,
                          jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0,
                          solarize_probability=0.0)
    return dataclasses.replace(identity, **changes)


def _unnormalized(config: ViewConfig, image) -> torch.Tensor:
    return view_transform(config, normalize=False)(image)


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.double().div(255).float()


# ---------------------------------------------------------------- inputs and outputs


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_uint8_tensor_input_gives_normalized_float_view(channels: int) -> None:
    view = view_transform(simclr_view(16))(_random_image(channels, 30, 40))
    assert type(view) is torch.Tensor  # a plain tensor, not a tv_tensors subclass
    assert view.shape == (3, 16, 16) and view.dtype == torch.float32
    assert torch.isfinite(view).all()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pil_input_gives_normalized_float_view(mode: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, (30, 40, len(mode)), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if mode == "L" else array, mode)
    view = view_transform(simclr_view(16))(image)
    assert type(view) is torch.Tensor
    assert view.shape == (3, 16, 16) and view.dtype == torch.float32


def test_pil_and_tensor_inputs_agree() -> None:
    image = _random_image()
    pil = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
    config = _identity_config()
    torch.testing.assert_close(_unnormalized(config, pil), _unnormalized(config, image))


def test_grey_and_alpha_channels_become_rgb() -> None:
    config = _identity_config()
    grey = _random_image(1)
    torch.testing.assert_close(_unnormalized(config, grey), _as_float(grey.expand(3, -1, -1)))
    rgba = _random_image(4)
    torch.testing.assert_close(_unnormalized(config, rgba), _as_float(rgba[:3]))


def test_normalization_uses_mean_and_std() -> None:
    image = _random_image()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    view = view_transform(_identity_config(mean=mean, std=std))(image)
    expected = (_as_float(image) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(view, expected)


@pytest.mark.parametrize(
    ("bad_image", "error", "message"),
    [
        (torch.rand(3, 8, 8), TypeError, "uint8"),
        (torch.zeros(2, 8, 8, dtype=torch.uint8), ValueError, "channels"),
        (torch.zeros(8, 8, dtype=torch.uint8), TypeError, "\\(C, H, W\\)"),
    ],
)
def test_bad_images_are_rejected(bad_image, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        view_transform(simclr_view(8))(bad_image)


# ---------------------------------------------------------------- each op alone


def test_identity_config_leaves_the_image() -> None:
    image = _random_image()
    torch.testing.assert_close(_unnormalized(_identity_config(), image), _as_float(image))


def test_crop_of_part_of_the_image_changes_it() -> None:
    torch.manual_seed(0)
    image = _random_image()
    view = _unnormalized(_identity_config(crop_scale=(0.1, 0.2)), image)
    assert view.shape == (3, SIDE, SIDE)
    assert not torch.allclose(view, _as_float(image), atol=1e-3)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_flip(probability: float) -> None:
    image = _random_image()
    view = _unnormalized(_identity_config(flip_probability=probability), image)
    expected = image.flip(-1) if probability == 1.0 else image
    torch.testing.assert_close(view, _as_float(expected))


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_color_jitter(probability: float) -> None:
    torch.manual_seed(0)
    image = _random_image()
    view = _unnormalized(_identity_config(jitter_probability=probability), image)
    if probability == 1.0:
        assert (view - _as_float(image)).abs().mean() > 0.01
    else:
        torch.testing.assert_close(view, _as_float(image))


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_grayscale(probability: float) -> None:
    image = _random_image()
    view = _unnormalized(_identity_config(grayscale_probability=probability), image)
    if probability == 1.0:
        torch.testing.assert_close(view[0], view[1])
        torch.testing.assert_close(view[0], view[2])
        luma = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).double() / 255  # ITU-R 601-2
        torch.testing.assert_close(view[0].double(), luma, rtol=0, atol=2 / 255)  # uint8 rounding
    else:
        torch.testing.assert_close(view, _as_float(image))


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_gaussian_blur(probability: float) -> None:
    torch.manual_seed(0)
    image = _random_image()
    view = _unnormalized(_identity_config(blur_probability=probability), image)
    if probability == 1.0:
        def total_variation(x: torch.Tensor) -> torch.Tensor:
            return (x[..., 1:] - x[..., :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
        # Noise blurred with sigma >= 0.1 is smoother; the mean colour stays.
        assert total_variation(view) < 0.9 * total_variation(_as_float(image))
        torch.testing.assert_close(view.mean(), _as_float(image).mean(), rtol=0, atol=0.02)
    else:
        torch.testing.assert_close(view, _as_float(image))


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_solarize(probability: float) -> None:
    image = _random_image()
    view = _unnormalized(_identity_config(solarize_probability=probability), image)
    # Solarize inverts the pixels at or above the threshold (0.5 -> 128 on the uint8 scale).
    expected = torch.where(image >= 128, 255 - image, image) if probability == 1.0 else image
    torch.testing.assert_close(view, _as_float(expected))


# ---------------------------------------------------------------- randomness


def test_two_views_of_one_image_differ() -> None:
    torch.manual_seed(0)
    image = _random_image(height=40, width=40)
    for two_views in (MultiViewTransform(view_transform(simclr_view(32))),
                      MultiViewTransform(*map(view_transform, byol_views(32)))):
        view1, view2 = two_views(image)
        assert view1.shape == view2.shape == (3, 32, 32)
        assert not torch.allclose(view1, view2)


def test_seeded_run_repeats_exactly() -> None:
    image = _random_image(height=40, width=40)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
    two_views = MultiViewTransform(*map(view_transform, byol_views(96)))  # blur and solarize on: every random op in play

    def run() -> list[torch.Tensor]:
        torch.manual_seed(1234)
        return [view for _ in range(3) for view in (*two_views(image), *two_views(pil))]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[4])  # ... while successive draws differ


def test_eval_transform_is_deterministic() -> None:
    image = _random_image(height=40, width=50)
    transform = eval_transform(32, resize=36)
    view = transform(image)
    assert view.shape == (3, 32, 32) and view.dtype == torch.float32
    assert torch.equal(view, transform(image))


# ---------------------------------------------------------------- recipes


def test_simclr_recipe() -> None:
    view = simclr_view(32)
    assert (view.crop_scale, view.crop_ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    assert view.flip_probability == 0.5
    assert (view.brightness, view.contrast, view.saturation, view.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert view.jitter_probability == 0.8 and view.grayscale_probability == 0.2
    assert view.blur_probability == 0.0  # off at <= 64 px, SimCLR's CIFAR setup
    assert simclr_view(64).blur_probability == 0.0
    assert simclr_view(96).blur_probability == 0.5
    assert simclr_view(32, blur=True).blur_probability == 0.5
    assert simclr_view(96).blur_sigma == (0.1, 2.0)
    assert view.solarize_probability == 0.0
    assert (view.mean, view.std) == (CIFAR10_MEAN, CIFAR10_STD)


def test_simclr_strength_scales_jitter() -> None:
    view = simclr_view(32, strength=0.5)
    assert (view.brightness, view.contrast, view.saturation, view.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert simclr_view(32, strength=4.0).hue == 0.5  # torchvision's bound on hue


@pytest.mark.parametrize(("side", "kernel"), [(224, 23), (96, 9), (64, 7), (32, 3), (8, 3)])
def test_blur_kernel_is_about_ten_percent(side: int, kernel: int) -> None:
    size = simclr_view(side).blur_kernel_size
    # SimCLR's code: kernel_size = side // 10, then radius = kernel_size // 2 and 2 * radius + 1 taps.
    assert size == kernel and size % 2 == 1


def test_byol_recipe_is_asymmetric() -> None:
    first, second = byol_views(96)
    for view in (first, second):
        jitter = (view.brightness, view.contrast, view.saturation, view.hue)
        assert jitter == pytest.approx((0.4, 0.4, 0.2, 0.1))
        assert view.jitter_probability == 0.8 and view.grayscale_probability == 0.2
        assert view.crop_scale == (0.08, 1.0) and view.flip_probability == 0.5
    assert (first.blur_probability, second.blur_probability) == (1.0, 0.1)
    assert (first.solarize_probability, second.solarize_probability) == (0.0, 0.2)
    small_first, small_second = byol_views(32)
    assert (small_first.blur_probability, small_second.blur_probability) == (0.0, 0.0)
    assert small_second.solarize_probability == 0.2


@pytest.mark.parametrize(
    "field_and_value",
    [
        ("crop_size", 0),
        ("crop_scale", (0.5, 0.2)),
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.5, 1.5)),
        ("crop_ratio", (0.0, 1.0)),
        ("crop_ratio", (2.0, 1.0)),
        ("flip_probability", 1.5),
        ("jitter_probability", -0.1),
        ("grayscale_probability", 2.0),
        ("blur_probability", -1.0),
        ("solarize_probability", 1.01),
        ("hue", 0.6),
        ("brightness", -0.1),
        ("contrast", -0.1),
        ("saturation", -0.1),
        ("std", (0.2, 0.0, 0.2)),
    ],
)
def test_view_config_validation_names_the_field(field_and_value) -> None:
    field, value = field_and_value
    settings = {"crop_size": 32, field: value}
    with pytest.raises(ValueError, match=field):
        ViewConfig(**settings)
