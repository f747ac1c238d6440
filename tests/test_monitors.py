"""Embedding monitors against hand-computed cases and loop transcriptions in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.monitors import (
    MONITOR_KEYS,
    alignment,
    collapse_warning,
    embedding_monitors,
    normalized_std,
    pair_cosines,
    positive_negative_cosine,
    rankme,
    uniformity,
)

# --- naive references: plain Python loops over rows and dimensions, float64 ---------------------------


def _unit_rows(z: np.ndarray) -> list[list[float]]:
    rows = []
    for row in z.tolist():
        norm = math.sqrt(sum(value * value for value in row))
        rows.append([value / norm for value in row])
    return rows


def _normalized_std_loops(z: np.ndarray) -> float:
    rows = _unit_rows(z)
    b, d = len(rows), len(rows[0])
    stds = []
    for j in range(d):
        column = [rows[i][j] for i in range(b)]
        mean = sum(column) / b
        stds.append(math.sqrt(sum((value - mean) ** 2 for value in column) / (b - 1)))
    return sum(stds) / d


def _rankme_via_gram(z: np.ndarray, eps: float = 1e-7) -> float:
    # Singular values as square roots of the Gram matrix's eigenvalues: a different route than an SVD.
    small_side = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(small_side), 0, None))
    total = sum(singular_values)
    entropy = 0.0
    for sigma in singular_values:
        p = sigma / total + eps
        entropy -= p * math.log(p)
    return math.exp(entropy)


def _alignment_loops(z1: np.ndarray, z2: np.ndarray, alpha: float) -> float:
    total = 0.0
    for a, b in zip(_unit_rows(z1), _unit_rows(z2), strict=True):
        total += math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))) ** alpha
    return total / len(z1)


def _uniformity_loops(z: np.ndarray, t: float) -> float:
    rows = _unit_rows(z)
    terms = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            squared = sum((x - y) ** 2 for x, y in zip(rows[i], rows[j], strict=True))
            terms.append(math.exp(-t * squared))
    return math.log(sum(terms) / len(terms))


def _cosines_loops(z1: np.ndarray, z2: np.ndarray) -> tuple[list[float], list[float]]:
    n = len(z1)
    views = _unit_rows(np.concatenate([z1, z2]))
    positives, negatives = [], []
    for i in range(2 * n):
        for j in range(i + 1, 2 * n):
            cosine = sum(x * y for x, y in zip(views[i], views[j], strict=True))
            (positives if j == i + n else negatives).append(cosine)
    return positives, negatives


def _random(b: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- collapsed batch: all rows equal --------------------------------------------------------------------


def test_collapsed_batch_reads_as_collapsed() -> None:
    row = torch.tensor([0.3, -1.2, 2.0, 0.5, 0.1, -0.7, 0.9, 1.1])
    z = row.repeat(32, 1)
    assert normalized_std(z) == pytest.approx(0.0, abs=1e-7)
    assert rankme(z) == pytest.approx(1.0, abs=1e-4)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-7)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-7)
    assert positive_negative_cosine(z, z) == pytest.approx((1.0, 1.0), abs=1e-7)
    message = collapse_warning(embedding_monitors(z, z), dim=8)
    assert message is not None and "normalized std" in message and "RankMe" in message


# --- isotropic batch: many Gaussian rows ------------------------------------------------------------


def _uniformity_on_sphere(d: int, t: float) -> float:
    """log E exp(-t |x - y|^2) for x, y uniform on S^{d-1}: |x - y|^2 = 2 - 2u with the cosine u having
    density proportional to (1 - u^2)^((d - 3) / 2); integrated numerically."""
    u = np.linspace(-1.0, 1.0, 200_001)
    density = (1 - u**2) ** ((d - 3) / 2)
    weights = np.full_like(u, u[1] - u[0])  # trapezoidal rule
    weights[[0, -1]] /= 2
    return math.log(np.sum(np.exp(-t * (2 - 2 * u)) * density * weights) / np.sum(density * weights))


def test_isotropic_batch_reads_as_spread_out() -> None:
    b, d = 4096, 32
    z1, z2 = _random(b, d, seed=1), _random(b, d, seed=2)
    assert normalized_std(z1) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    # Marchenko-Pastur: with B/D = 128 the singular values spread by about +-9%, costing < 1% of rank.
    assert d * 0.99 < rankme(z1) <= d
    # the quadrature against the closed form on S^2, where the cosine is uniform: E e^(2tu) = sinh(2t) / 2t
    assert _uniformity_on_sphere(3, t=1.0) == pytest.approx(math.log(math.sinh(2) / 2) - 2, rel=1e-8)
    limit = _uniformity_on_sphere(d, t=2.0)
    assert -4 < limit < -3.7  # -2t + 2t^2/D = -3.75
    assert uniformity(z1[:2048]) == pytest.approx(limit, abs=0.01)
    # Independent views: each view on its own side, |z1 - z2|^2 = 2 - 2 cos, E cos = 0.
    assert alignment(z1, z2) == pytest.approx(2.0, abs=0.02)
    positive, negative = positive_negative_cosine(z1[:512], z2[:512])
    assert positive == pytest.approx(0.0, abs=0.03) and negative == pytest.approx(0.0, abs=0.01)
    assert collapse_warning(embedding_monitors(z1[:512], z2[:512]), dim=d) is None


# --- exact cases -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "d"), [(8, 16), (16, 8), (5, 5)])
def test_rankme_of_orthonormal_rows_or_columns_is_min_b_d(b: int, d: int) -> None:
    q, _ = torch.linalg.qr(_random(max(b, d), min(b, d), seed=3))  # orthonormal columns
    z = q if b >= d else q.T  # orthonormal rows when b < d: all singular values 1
    assert rankme(z) == pytest.approx(min(b, d), rel=1e-5)
    assert rankme(7.5 * z) == pytest.approx(min(b, d), rel=1e-5)  # scale free


def test_tiny_cases_by_hand() -> None:
    identity = torch.eye(2)
    # rows (1, 0) and (0, 1): each column holds {1, 0}, unbiased std sqrt(1/2)
    assert normalized_std(identity) == pytest.approx(math.sqrt(0.5))
    # singular values 3 and 1: p = (3/4, 1/4)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert rankme(torch.diag(torch.tensor([3.0, 1.0])), eps=0.0) == pytest.approx(expected)
    # orthogonal views: |x - y| = sqrt(2)
    flipped = identity.flip(0)
    assert alignment(identity, flipped, alpha=2) == pytest.approx(2.0)
    assert alignment(identity, flipped, alpha=1) == pytest.approx(math.sqrt(2))
    assert alignment(identity, -identity, alpha=2) == pytest.approx(4.0)
    # one pair at squared distance 2 -> -2t; an equilateral triangle, all at squared distance 3 -> -3t
    assert uniformity(identity, t=2) == pytest.approx(-4.0)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    triangle = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert uniformity(triangle, t=1.5) == pytest.approx(-4.5)
    # two images, the same two views: positives 1; negatives (a0,a1), (a0,b1), (a1,b0), (b0,b1) all 0
    positives, negatives = pair_cosines(identity, identity)
    assert positives.tolist() == pytest.approx([1.0, 1.0]) and negatives.tolist() == pytest.approx([0.0] * 4)


@pytest.mark.parametrize(("b", "d", "seed"), [(2, 3, 0), (7, 4, 1), (12, 20, 2)])
def test_monitors_match_loop_references(b: int, d: int, seed: int) -> None:
    z1 = _random(b, d, seed) + 0.5  # off-centre, so that normalizing and centring both matter
    z2 = z1 + 0.3 * _random(b, d, seed + 100)
    a1, a2 = z1.numpy(), z2.numpy()
    assert normalized_std(z1) == pytest.approx(_normalized_std_loops(a1), rel=1e-10)
    assert rankme(z1) == pytest.approx(_rankme_via_gram(a1), rel=1e-8)
    for alpha in (1.0, 2.0, 3.0):
        assert alignment(z1, z2, alpha) == pytest.approx(_alignment_loops(a1, a2, alpha), rel=1e-10)
    for t in (0.5, 2.0, 50.0):
        assert uniformity(z1, t) == pytest.approx(_uniformity_loops(a1, t), rel=1e-10)
    positives, negatives = pair_cosines(z1, z2)
    expected_positives, expected_negatives = _cosines_loops(a1, a2)
    assert len(negatives) == b * (2 * b - 2)
    assert positives.tolist() == pytest.approx(expected_positives, rel=1e-10)
    assert sorted(negatives.tolist()) == pytest.approx(sorted(expected_negatives), rel=1e-10, abs=1e-12)
    assert positive_negative_cosine(z1, z2) == pytest.approx(
        (np.mean(expected_positives), np.mean(expected_negatives)), rel=1e-10, abs=1e-12)


def test_embedding_monitors_gathers_the_monitors() -> None:
    z1 = _random(16, 8, seed=4).float().requires_grad_()
    z2 = _random(16, 8, seed=5).float()
    metrics = embedding_monitors(z1, z2)
    assert tuple(metrics) == MONITOR_KEYS
    assert metrics == pytest.approx({
        "normalized_std": normalized_std(z1),
        "rankme": rankme(z1),
        "alignment": alignment(z1, z2),
        "uniformity": (uniformity(z1) + uniformity(z2)) / 2,
        "positive_cosine": positive_negative_cosine(z1, z2)[0],
        "negative_cosine": positive_negative_cosine(z1, z2)[1],
    })
    assert all(type(value) is float for value in metrics.values())
    assert z1.grad is None
    # bf16 projections (autocast) are read in float64 too
    low_precision = embedding_monitors(z1.detach().bfloat16(), z2.bfloat16())
    assert low_precision == pytest.approx(metrics, rel=0.05, abs=0.01)


def test_embedding_monitors_gives_nan_for_diverged_embeddings() -> None:
    z = _random(8, 4)
    metrics = embedding_monitors(z, torch.full_like(z, float("nan")))
    assert set(metrics) == set(MONITOR_KEYS) and all(math.isnan(value) for value in metrics.values())
    assert collapse_warning(metrics, dim=4) is None


def test_collapse_warning_catches_dimensional_collapse() -> None:
    # One dimension varies, the others barely: the mean std stays up (about 1/D), the rank does not.
    d = 16
    z = 1e-3 * _random(256, d, seed=6)
    z[:, 0] = _random(256, 1, seed=7)[:, 0]
    metrics = embedding_monitors(z, z)
    assert metrics["normalized_std"] > 0.2 / math.sqrt(d)
    message = collapse_warning(metrics, dim=d)
    assert message is not None and "RankMe" in message and "normalized std" not in message
    assert collapse_warning({}, dim=d) is None


def test_bad_input_raises_clear_errors() -> None:
    z = _random(4, 3)
    with pytest.raises(ValueError, match=r"shape \(B, D\)"):
        normalized_std(z[0])
    with pytest.raises(ValueError, match="at least 2 rows"):
        normalized_std(z[:1])
    with pytest.raises(ValueError, match="same shape"):
        alignment(z, z[:3])
    with pytest.raises(ValueError, match="alpha"):
        alignment(z, z, alpha=0)
    with pytest.raises(ValueError, match="t must be"):
        uniformity(z, t=-1)
    with pytest.raises(ValueError, match="all zero"):
        rankme(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        normalized_std(torch.full_like(z, float("inf")))
    with pytest.raises(ValueError, match="at least 2 rows"):
        embedding_monitors(z[:1], z[:1])
    with pytest.raises(ValueError, match="dim"):
        collapse_warning({}, dim=0)
