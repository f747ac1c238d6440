"""Property-based tests (hypothesis): losses and augmentations over inputs drawn at random.

Losses: finite values and gradients for any finite input, their ranges, and invariance to the scale of
each embedding (both compare directions only). Augmentations: any uint8 image of any size from 1x1 and
with 1 or 3 channels gives views of the configured shape with finite values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfsup.losses import BYOLLoss, NTXentLoss
from selfsup.methods.byol import byol_views
from selfsup.methods.simclr import simclr_view
from selfsup.transforms.batched import BatchedViewAugment
from selfsup.transforms.views import ViewConfig, view_transform

# Modest example counts: the file runs in seconds, and every run draws new examples.
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def embedding_pairs(draw, max_rows: int = 6, max_dim: int = 8):
    """Two (N, D) float32 tensors of finite values, N and D drawn too."""
    rows = draw(st.integers(1, max_rows))
    dim = draw(st.integers(1, max_dim))
    values = draw(st.lists(finite, min_size=2 * rows * dim, max_size=2 * rows * dim))
    both = torch.tensor(values, dtype=torch.float32).view(2, rows, dim)
    return both[0].clone(), both[1].clone()


def _finite_gradients(loss_fn, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    z1, z2 = z1.requires_grad_(), z2.requires_grad_()
    loss = loss_fn(z1, z2)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    return loss.detach()


@PROPERTY
@given(pair=embedding_pairs(), temperature=st.floats(0.05, 2.0))
def test_ntxent_is_finite_and_bounded(pair, temperature):
    z1, z2 = pair
    loss = _finite_gradients(NTXentLoss(temperature), z1, z2)
    # -log softmax >= 0; the cosines lie in [-1, 1], so each term is at most 2/t + log(2N - 1).
    upper = 2 / temperature + math.log(2 * len(z1) - 1)
    assert torch.isfinite(loss) and -1e-5 <= loss.item() <= upper + 1e-4


@PROPERTY
@given(pair=embedding_pairs(), temperature=st.floats(0.05, 2.0), data=st.data())
def test_ntxent_ignores_the_scale_of_each_embedding(pair, temperature, data):
    z1, z2 = (z.double() for z in pair)
    # Directions must be well defined: rows far from zero (F.normalize's eps acts near zero).
    z1[z1.norm(dim=1) < 1e-3, 0] += 1.0
    z2[z2.norm(dim=1) < 1e-3, 0] += 1.0
    scales = st.floats(1e-2, 1e2)
    s1 = torch.tensor(data.draw(st.lists(scales, min_size=len(z1), max_size=len(z1))), dtype=torch.float64)
    s2 = torch.tensor(data.draw(st.lists(scales, min_size=len(z1), max_size=len(z1))), dtype=torch.float64)
    loss = NTXentLoss(temperature)
    torch.testing.assert_close(loss(z1 * s1[:, None], z2 * s2[:, None]), loss(z1, z2), rtol=1e-9, atol=1e-9)


@PROPERTY
@given(pair=embedding_pairs())
def test_byol_loss_is_finite_and_within_0_and_4(pair):
    loss = _finite_gradients(BYOLLoss(), *pair)
    assert -1e-6 <= loss.item() <= 4 + 1e-6


@PROPERTY
@given(pair=embedding_pairs(), scale=st.floats(1e-2, 1e2))
def test_byol_loss_ignores_positive_scale(pair, scale):
    p, z = (t.double() for t in pair)
    p[p.norm(dim=1) < 1e-3, 0] += 1.0
    z[z.norm(dim=1) < 1e-3, 0] += 1.0
    torch.testing.assert_close(BYOLLoss()(scale * p, z), BYOLLoss()(p, z), rtol=1e-9, atol=1e-9)


@st.composite
def uint8_images(draw, max_batch: int = 1, max_side: int = 40):
    """uint8 (B, C, H, W) with C in {1, 3}, sides from 1, filled with noise or one constant value."""
    batch = draw(st.integers(1, max_batch))
    channels = draw(st.sampled_from([1, 3]))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    shape = (batch, channels, height, width)
    if draw(st.booleans()):
        array = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, shape, dtype=np.uint8)
    else:  # flat images: zero variance for contrast, zero chroma for saturation and hue
        array = np.full(shape, draw(st.sampled_from([0, 1, 128, 254, 255])), dtype=np.uint8)
    return torch.from_numpy(array)


def _view_configs() -> st.SearchStrategy[ViewConfig]:
    crop = st.sampled_from([8, 16, 32])  # PretrainConfig.image_size is at least 8
    return st.one_of(
        st.builds(lambda size, blur: simclr_view(size, blur=blur), crop, st.booleans()),
        st.builds(lambda size, which: byol_views(size, blur=True)[which], crop, st.sampled_from([0, 1])),
    )


@PROPERTY
@given(images=uint8_images(), config=_view_configs(), seed=st.integers(0, 2**31 - 1))
def test_per_image_view_keeps_shape_and_is_finite(images, config, seed):
    torch.manual_seed(seed)
    view = view_transform(config)(images[0])
    assert view.shape == (3, config.crop_size, config.crop_size) and view.dtype == torch.float32
    assert torch.isfinite(view).all()


@PROPERTY
@given(images=uint8_images(max_batch=4), config=_view_configs(), seed=st.integers(0, 2**31 - 1))
def test_batched_view_keeps_shape_and_is_finite(images, config, seed):
    views = BatchedViewAugment(config)(images, torch.Generator().manual_seed(seed))
    assert views.shape == (len(images), 3, config.crop_size, config.crop_size) and views.dtype == torch.float32
    assert torch.isfinite(views).all()
    # Before normalization every value was a pixel intensity in [0, 1].
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    intensities = views * std + mean
    assert intensities.min() >= -1e-5 and intensities.max() <= 1 + 1e-5


@pytest.mark.parametrize("augment", ["per-image", "batched"])
def test_one_pixel_image_gives_a_flat_view(augment):
    # The smallest input: every crop is that pixel, so the view is flat (whatever the colour jitter did).
    image = torch.tensor([[[200]], [[30]], [[90]]], dtype=torch.uint8)
    config = simclr_view(8)
    torch.manual_seed(0)
    view = view_transform(config)(image) if augment == "per-image" else BatchedViewAugment(config)(image[None])[0]
    assert torch.allclose(view, view[:, :1, :1].expand_as(view))
