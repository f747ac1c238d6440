"""NT-Xent and BYOL's loss against naive float64 transcriptions of their formulas, and by gradient."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import BYOLLoss, NTXentLoss


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def naive_ntxent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. 1 written out: views 0..N-1 from z1, N..2N-1 from z2, view i's partner is i +- N."""
    n = z1.shape[0]
    views = [row.tolist() for row in torch.cat([z1, z2]).double()]
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        numerator = math.exp(_cosine(views[i], views[partner]) / temperature)
        denominator = 0.0
        for k in range(2 * n):
            if k != i:
                denominator += math.exp(_cosine(views[i], views[k]) / temperature)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def naive_byol(p: torch.Tensor, z: torch.Tensor) -> float:
    """Grill et al. eq. 2 row by row: || p/||p|| - z/||z|| ||^2, averaged over the batch."""
    rows = p.double().tolist()
    total = 0.0
    for p_row, z_row in zip(rows, z.double().tolist(), strict=True):
        p_norm = math.sqrt(sum(x * x for x in p_row))
        z_norm = math.sqrt(sum(x * x for x in z_row))
        total += sum((x / p_norm - y / z_norm) ** 2 for x, y in zip(p_row, z_row, strict=True))
    return total / len(rows)


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("dim", [1, 3, 16])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_ntxent_matches_naive_loop(n: int, dim: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(1000 * n + 10 * dim + int(100 * temperature))
    z1 = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    z2 = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    loss = NTXentLoss(temperature)(z1, z2)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_ntxent(z1, z2, temperature), rel=1e-10, abs=1e-12)


def test_ntxent_single_pair_is_zero() -> None:
    # N = 1: the only other view is the partner, so numerator == denominator.
    z1, z2 = torch.randn(1, 4), torch.randn(1, 4)
    assert NTXentLoss(0.1)(z1, z2).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_ntxent_gradcheck_float64(temperature: float) -> None:
    generator = torch.Generator().manual_seed(3)
    z1 = torch.randn(4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    z2 = torch.randn(4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(NTXentLoss(temperature), (z1, z2))


def test_ntxent_symmetric_in_views() -> None:
    z1, z2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    criterion = NTXentLoss(0.1)
    torch.testing.assert_close(criterion(z1, z2), criterion(z2, z1), rtol=1e-12, atol=1e-12)


def test_ntxent_invariant_to_positive_scaling() -> None:
    z1, z2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    row_scales = torch.rand(8, 1, dtype=torch.float64) * 100 + 0.01
    criterion = NTXentLoss(0.5)
    torch.testing.assert_close(criterion(3.7 * z1, row_scales * z2), criterion(z1, z2),
                               rtol=1e-12, atol=1e-12)


def _near_collapsed_pairs(n: int = 16, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose similarities are all close to 1: at t = 0.05 every logit is ~20, the case where
    exp without log-sum-exp overflows fp16 and loses float32 precision."""
    generator = torch.Generator().manual_seed(7)
    shared = torch.randn(1, dim, generator=generator)
    z1 = shared + 0.3 * torch.randn(n, dim, generator=generator)
    z2 = z1 + 0.05 * torch.randn(n, dim, generator=generator)
    return z1 * 50, z2 * 50  # large norms, too


def test_ntxent_stable_in_float32_at_low_temperature() -> None:
    z1, z2 = _near_collapsed_pairs()
    loss = NTXentLoss(0.05)(z1, z2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(naive_ntxent(z1, z2, 0.05), rel=1e-4)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_ntxent_stable_under_cpu_autocast(autocast_dtype: torch.dtype) -> None:
    z1, z2 = _near_collapsed_pairs()
    projection = torch.nn.Linear(32, 32)
    with torch.no_grad():
        projection.weight.copy_(torch.eye(32))
        projection.bias.zero_()
    with torch.autocast("cpu", dtype=autocast_dtype):
        low1, low2 = projection(z1), projection(z2)  # half-precision embeddings, as a real head makes
        loss = NTXentLoss(0.05)(low1, low2)
    assert low1.dtype == autocast_dtype
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Against the same rounded embeddings, the loss is float32-accurate ...
    assert loss.item() == pytest.approx(naive_ntxent(low1, low2, 0.05), rel=1e-4)
    # ... and against the full-precision ones, off by no more than the rounding of the inputs.
    assert loss.item() == pytest.approx(naive_ntxent(z1, z2, 0.05), rel=1e-2)


def test_ntxent_gradient_under_autocast_is_finite() -> None:
    z1, z2 = _near_collapsed_pairs()
    z1.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NTXentLoss(0.05)(z1.bfloat16(), z2.bfloat16())
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("z1_shape", "z2_shape", "message"),
    [
        ((4, 8), (4, 9), "same shape"),
        ((4, 8), (5, 8), "same shape"),
        ((4, 8, 1), (4, 8, 1), "expects \\(N, D\\)"),
        ((8,), (8,), "expects \\(N, D\\)"),
        ((0, 8), (0, 8), "empty"),
    ],
)
def test_ntxent_rejects_bad_shapes(z1_shape, z2_shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NTXentLoss()(torch.randn(z1_shape), torch.randn(z2_shape))


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_ntxent_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature)


def test_ntxent_default_temperature_is_simclr_cifar() -> None:
    assert NTXentLoss().temperature == 0.5


# ---------------------------------------------------------------- BYOL


@pytest.mark.parametrize(("n", "dim"), [(1, 1), (1, 5), (4, 3), (16, 64)])
def test_byol_loss_matches_closed_form(n: int, dim: int) -> None:
    generator = torch.Generator().manual_seed(n * dim)
    p = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    z = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    loss = BYOLLoss()(p, z)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_byol(p, z), rel=1e-10, abs=1e-12)


def test_byol_loss_zero_for_equal_directions_four_for_opposite() -> None:
    p = torch.randn(6, 10, dtype=torch.float64)
    scales = torch.rand(6, 1, dtype=torch.float64) * 10 + 0.1
    assert BYOLLoss()(p, scales * p).item() == pytest.approx(0.0, abs=1e-12)
    assert BYOLLoss()(p, -scales * p).item() == pytest.approx(4.0, abs=1e-12)


def test_byol_loss_within_zero_and_four() -> None:
    generator = torch.Generator().manual_seed(11)
    for _ in range(20):
        p, z = torch.randn(2, 32, 3, generator=generator)
        loss = BYOLLoss()(p, z).item()
        assert 0.0 <= loss <= 4.0


def test_byol_loss_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(5)
    p = torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    z = torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(BYOLLoss(), (p, z))


def test_byol_loss_gradient_reaches_prediction_not_detached_target() -> None:
    p = torch.randn(4, 8, requires_grad=True)
    z_source = torch.randn(4, 8, requires_grad=True)
    BYOLLoss()(p, z_source.detach()).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z_source.grad is None


def test_byol_loss_in_float32_under_autocast() -> None:
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = BYOLLoss()(p.bfloat16(), z.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_byol(p.bfloat16(), z.bfloat16()), rel=1e-5)


@pytest.mark.parametrize(("p_shape", "z_shape"), [((4, 8), (4, 9)), ((8,), (8,)), ((0, 8), (0, 8))])
def test_byol_loss_rejects_bad_shapes(p_shape, z_shape) -> None:
    with pytest.raises(ValueError, match="BYOLLoss"):
        BYOLLoss()(torch.randn(p_shape), torch.randn(z_shape))
