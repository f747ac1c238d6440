"""InfoNCE, negative cosine, Barlow Twins, VICReg and DINO against naive float64 transcriptions of their
formulas (python loops), by gradient checks, and in two gloo processes against one process.

One spawn of two processes (the module fixture ``two_processes``) runs every distributed case and saves what each
rank computed; the tests compare it with the same case run here in one process on the whole global batch.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

import selfsup.losses.dino as dino_loss_module
from selfsup import dist
from selfsup.losses import (
    BarlowTwinsLoss,
    DINOLoss,
    InfoNCELoss,
    NegativeCosineLoss,
    VICRegLoss,
    dino_teacher_temperature,
)

# ---------------------------------------------------------------- naive references (python floats, loops)


def _rows(tensor: torch.Tensor) -> list[list[float]]:
    return tensor.detach().double().tolist()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _unit(a: list[float]) -> list[float]:
    norm = math.sqrt(_dot(a, a))
    return [x / norm for x in a]


def naive_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None, temperature: float) -> float:
    """MoCo eq. 1 row by row: the positive k_i against the queue's rows, or the other rows of k."""
    queries, keys = [_unit(r) for r in _rows(q)], [_unit(r) for r in _rows(k)]
    total = 0.0
    for i, query in enumerate(queries):
        if queue is not None:
            negatives = [_unit(r) for r in _rows(queue)]
        else:
            negatives = [key for j, key in enumerate(keys) if j != i]
        numerator = math.exp(_dot(query, keys[i]) / temperature)
        denominator = numerator
        for negative in negatives:
            denominator += math.exp(_dot(query, negative) / temperature)
        total += -math.log(numerator / denominator)
    return total / len(queries)


def naive_negative_cosine(p: torch.Tensor, z: torch.Tensor) -> float:
    pairs = list(zip(_rows(p), _rows(z), strict=True))
    return -sum(_dot(_unit(a), _unit(b)) for a, b in pairs) / len(pairs)


def _columns(tensor: torch.Tensor) -> list[list[float]]:
    return tensor.detach().double().T.tolist()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def naive_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float, eps: float = 1e-5) -> float:
    """Zbontar et al. eq. 1: columns standardised (biased variance + eps), C_ij summed over rows."""

    def standardise(column: list[float]) -> list[float]:
        mean = _mean(column)
        variance = sum((x - mean) ** 2 for x in column) / len(column)
        return [(x - mean) / math.sqrt(variance + eps) for x in column]

    a, b = [standardise(c) for c in _columns(z1)], [standardise(c) for c in _columns(z2)]
    n, d = z1.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][row] * b[j][row] for row in range(n)) / n
            total += (1 - c_ij) ** 2 if i == j else lambda_offdiag * c_ij**2
    return total


def naive_vicreg(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float, variance_weight: float,
                 covariance_weight: float) -> float:
    """Bardes et al. eqs. 1-6 with loops: unbiased variance and covariance, MSE over N x D entries."""
    n, d = z1.shape
    invariance = sum((x - y) ** 2 for a, b in zip(_rows(z1), _rows(z2), strict=True)
                     for x, y in zip(a, b, strict=True)) / (n * d)

    def variance_and_covariance(z: torch.Tensor) -> tuple[float, float]:
        columns = _columns(z)
        means = [_mean(c) for c in columns]
        hinge, off_diagonal = 0.0, 0.0
        for i in range(d):
            for j in range(d):
                cov_ij = sum((columns[i][r] - means[i]) * (columns[j][r] - means[j]) for r in range(n)) / (n - 1)
                if i == j:
                    hinge += max(0.0, 1 - math.sqrt(cov_ij + 1e-4))
                else:
                    off_diagonal += cov_ij**2
        return hinge / d, off_diagonal / d

    (v1, c1), (v2, c2) = variance_and_covariance(z1), variance_and_covariance(z2)
    return invariance_weight * invariance + variance_weight * (v1 + v2) + covariance_weight * (c1 + c2)


def naive_dino(students: list[torch.Tensor], teachers: list[torch.Tensor], center: list[float],
               teacher_temperature: float, student_temperature: float, include_same_view: bool = False) -> float:
    """Caron et al. eq. 3 with explicit softmax sums: H(P_t(a), P_s(b)) over pairs a != b."""

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(x) for x in row]
        total = sum(exps)
        return [e / total for e in exps]

    total, pairs = 0.0, 0
    for a, teacher in enumerate(teachers):
        for b, student in enumerate(students):
            if a == b and not include_same_view:
                continue
            term = 0.0
            for t_row, s_row in zip(_rows(teacher), _rows(student), strict=True):
                p_t = softmax([(x - c) / teacher_temperature for x, c in zip(t_row, center, strict=True)])
                p_s = softmax([x / student_temperature for x in s_row])
                term += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s, strict=True))
            total += term / teacher.shape[0]
            pairs += 1
    return total / pairs


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=generator)


# ---------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("queue_size", [None, 1, 5, 33])
@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
def test_infonce_matches_naive_loop(n: int, dim: int, queue_size: int | None, temperature: float) -> None:
    generator = torch.Generator().manual_seed(100 * n + dim + 7 * (queue_size or 0) + int(100 * temperature))
    q, k = _randn(generator, n, dim), _randn(generator, n, dim)
    queue = None if queue_size is None else _randn(generator, queue_size, dim) * 3
    loss = InfoNCELoss(temperature)(q, k, queue)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_infonce(q, k, queue, temperature), rel=1e-10, abs=1e-12)


def test_infonce_normalized_queue_skips_only_the_normalisation() -> None:
    generator = torch.Generator().manual_seed(4)
    q, k = _randn(generator, 5, 8), _randn(generator, 5, 8)
    unit_queue = torch.nn.functional.normalize(_randn(generator, 9, 8), dim=1)
    loss = InfoNCELoss(0.2)(q, k, unit_queue, queue_normalized=True)
    assert loss.item() == pytest.approx(naive_infonce(q, k, unit_queue, 0.2), rel=1e-10)
    # The flag is a promise: a queue of longer rows is then taken as it is.
    assert InfoNCELoss(0.2)(q, k, 3 * unit_queue, queue_normalized=True).item() != pytest.approx(loss.item())


def test_infonce_single_query_without_queue_is_zero() -> None:
    assert InfoNCELoss()(torch.randn(1, 4), torch.randn(1, 4)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("with_queue", [False, True])
def test_infonce_gradcheck_float64(with_queue: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    q = _randn(generator, 4, 5).requires_grad_()
    k = _randn(generator, 4, 5).requires_grad_()
    queue = _randn(generator, 6, 5) if with_queue else None
    assert torch.autograd.gradcheck(lambda q, k: InfoNCELoss(0.3)(q, k, queue), (q, k))


def test_infonce_gradient_reaches_queries_not_momentum_keys_nor_queue() -> None:
    q = torch.randn(4, 8, requires_grad=True)
    key_source = torch.randn(4, 8, requires_grad=True)
    queue = torch.randn(10, 8, requires_grad=True)
    InfoNCELoss()(q, key_source.detach(), queue).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert key_source.grad is None and queue.grad is None


@pytest.mark.parametrize("with_queue", [False, True])
def test_infonce_in_float32_under_autocast(with_queue: bool) -> None:
    q, k, queue = torch.randn(8, 16), torch.randn(8, 16), torch.randn(12, 16) if with_queue else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_q, low_k = q.bfloat16(), k.bfloat16()
        loss = InfoNCELoss()(low_q, low_k, queue)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_infonce(low_q, low_k, queue, 0.2), rel=1e-5)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "queue_shape", "message"),
    [
        ((4, 8), (4, 9), None, "same shape"),
        ((4, 8), (5, 8), None, "same shape"),
        ((8,), (8,), None, "expects \\(N, D\\)"),
        ((0, 8), (0, 8), None, "empty"),
        ((4, 8), (4, 8), (6, 7), "queue"),
        ((4, 8), (4, 8), (6,), "queue"),
        ((4, 8), (4, 8), (0, 8), "queue"),
    ],
)
def test_infonce_rejects_bad_shapes(q_shape, k_shape, queue_shape, message: str) -> None:
    queue = None if queue_shape is None else torch.randn(queue_shape)
    with pytest.raises(ValueError, match=message):
        InfoNCELoss()(torch.randn(q_shape), torch.randn(k_shape), queue)


@pytest.mark.parametrize("temperature", [0.0, -0.2, float("nan")])
def test_infonce_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature)


def test_infonce_default_temperature_is_moco_v2() -> None:
    assert InfoNCELoss().temperature == 0.2


# ---------------------------------------------------------------- negative cosine (SimSiam)


@pytest.mark.parametrize(("n", "dim"), [(1, 1), (1, 5), (4, 3), (16, 32)])
def test_negative_cosine_matches_naive_loop(n: int, dim: int) -> None:
    generator = torch.Generator().manual_seed(n * dim)
    p, z = _randn(generator, n, dim), _randn(generator, n, dim)
    loss = NegativeCosineLoss()(p, z)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_negative_cosine(p, z), rel=1e-10, abs=1e-12)


def test_negative_cosine_bounds() -> None:
    p = torch.randn(6, 10, dtype=torch.float64)
    scales = torch.rand(6, 1, dtype=torch.float64) * 10 + 0.1
    assert NegativeCosineLoss()(p, scales * p).item() == pytest.approx(-1.0, abs=1e-12)
    assert NegativeCosineLoss()(p, -scales * p).item() == pytest.approx(1.0, abs=1e-12)


def test_negative_cosine_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(5)
    p, z = _randn(generator, 4, 6).requires_grad_(), _randn(generator, 4, 6).requires_grad_()
    assert torch.autograd.gradcheck(NegativeCosineLoss(), (p, z))


def test_negative_cosine_in_float32_under_autocast() -> None:
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NegativeCosineLoss()(p.bfloat16(), z.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_negative_cosine(p.bfloat16(), z.bfloat16()), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("p_shape", "z_shape"), [((4, 8), (4, 9)), ((8,), (8,)), ((0, 8), (0, 8))])
def test_negative_cosine_rejects_bad_shapes(p_shape, z_shape) -> None:
    with pytest.raises(ValueError, match="NegativeCosineLoss"):
        NegativeCosineLoss()(torch.randn(p_shape), torch.randn(z_shape))


# ---------------------------------------------------------------- Barlow Twins


# (3, 16) and (4, 40) have 2N < D: the sum of squares comes from the N x N Gram matrices.
@pytest.mark.parametrize(("n", "dim"), [(2, 1), (3, 4), (8, 3), (16, 12), (3, 16), (4, 40)])
@pytest.mark.parametrize("lambda_offdiag", [0.0, 5e-3, 0.5])
def test_barlow_twins_matches_naive_loop(n: int, dim: int, lambda_offdiag: float) -> None:
    generator = torch.Generator().manual_seed(10 * n + dim)
    z1, z2 = _randn(generator, n, dim) * 2 + 1, _randn(generator, n, dim)
    loss = BarlowTwinsLoss(lambda_offdiag)(z1, z2)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_barlow_twins(z1, z2, lambda_offdiag), rel=1e-10, abs=1e-12)


def test_barlow_twins_zero_variance_column_stays_finite() -> None:
    z1, z2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    z1[:, 2] = 3.0  # standardises to zeros: C_22 = 0 contributes (1 - 0)^2
    loss = BarlowTwinsLoss()(z1, z2)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(naive_barlow_twins(z1, z2, 5e-3), rel=1e-10)


def test_barlow_twins_identical_decorrelated_views_give_almost_zero() -> None:
    # Orthogonal columns of mean 0: C is the identity up to eps.
    z = torch.linalg.qr(torch.randn(16, 4, dtype=torch.float64))[0]
    z = (z - z.mean(0)) * 4
    assert BarlowTwinsLoss(0.0)(z, z).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("n", "dim"), [(5, 3), (3, 16)])
def test_barlow_twins_gradcheck_float64_both_forms(n: int, dim: int) -> None:
    generator = torch.Generator().manual_seed(6)
    z1, z2 = _randn(generator, n, dim).requires_grad_(), _randn(generator, n, dim).requires_grad_()
    assert torch.autograd.gradcheck(BarlowTwinsLoss(0.1), (z1, z2))


@pytest.mark.parametrize("loss", [BarlowTwinsLoss(), VICRegLoss()], ids=["barlow_twins", "vicreg"])
def test_gram_form_is_accurate_in_float32_at_paper_width(loss: nn.Module) -> None:
    # 64 rows of 2048 (2N < D): the float32 loss and gradient against the same loss in float64.
    z1, z2 = torch.randn(64, 2048), torch.randn(64, 2048)
    z2 = 0.6 * z1 + 0.8 * z2  # correlated views, as training produces
    leaves = [z.clone().requires_grad_() for z in (z1, z2)]
    loss(*leaves).backward()
    leaves64 = [z.double().requires_grad_() for z in (z1, z2)]
    reference = loss(*leaves64)
    reference.backward()
    assert loss(z1, z2).item() == pytest.approx(reference.item(), rel=1e-5)
    for leaf, leaf64 in zip(leaves, leaves64, strict=True):
        assert torch.allclose(leaf.grad.double(), leaf64.grad, rtol=1e-3, atol=1e-4 * float(leaf64.grad.abs().max()))


def test_barlow_twins_in_float32_under_autocast() -> None:
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = BarlowTwinsLoss()(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_barlow_twins(z1.bfloat16(), z2.bfloat16(), 5e-3), rel=1e-5)


@pytest.mark.parametrize(
    ("z1_shape", "z2_shape", "message"),
    [((4, 8), (4, 9), "same shape"), ((8,), (8,), "expects \\(N, D\\)"), ((0, 8), (0, 8), "empty"),
     ((1, 8), (1, 8), "at least 2 rows")],
)
def test_barlow_twins_rejects_bad_shapes(z1_shape, z2_shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BarlowTwinsLoss()(torch.randn(z1_shape), torch.randn(z2_shape))


@pytest.mark.parametrize(("keyword", "value"), [("lambda_offdiag", -1e-3), ("lambda_offdiag", float("nan")),
                                                ("eps", 0.0)])
def test_barlow_twins_rejects_bad_hyper_parameters(keyword: str, value: float) -> None:
    with pytest.raises(ValueError, match=keyword):
        BarlowTwinsLoss(**{keyword: value})


# ---------------------------------------------------------------- VICReg


# (3, 16) and (4, 40) have N < D: the covariance's sum of squares comes from the N x N Gram matrix.
@pytest.mark.parametrize(("n", "dim"), [(2, 1), (3, 4), (8, 3), (16, 12), (3, 16), (4, 40)])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                                     (2.0, 3.0, 5.0)])
def test_vicreg_matches_naive_loop(n: int, dim: int, weights: tuple[float, float, float]) -> None:
    generator = torch.Generator().manual_seed(10 * n + dim)
    # Column scales around 1, so the variance hinge is active for some columns and not for others.
    scales = torch.linspace(0.3, 1.7, dim, dtype=torch.float64)
    z1, z2 = _randn(generator, n, dim) * scales, _randn(generator, n, dim) * scales + 0.5
    loss = VICRegLoss(*weights)(z1, z2)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_vicreg(z1, z2, *weights), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(("n", "dim"), [(6, 4), (3, 7)])
def test_vicreg_gradcheck_float64(n: int, dim: int) -> None:
    generator = torch.Generator().manual_seed(8)
    z1 = (_randn(generator, n, dim) * 0.5).requires_grad_()  # std < 1: the variance hinge is active
    z2 = (_randn(generator, n, dim) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(VICRegLoss(2.0, 3.0, 5.0), (z1, z2))


def test_vicreg_in_float32_under_autocast() -> None:
    z1, z2 = torch.randn(8, 6) * 0.5, torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = VICRegLoss()(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_vicreg(z1.bfloat16(), z2.bfloat16(), 25, 25, 1), rel=1e-5)


def test_vicreg_defaults_are_the_papers() -> None:
    loss = VICRegLoss()
    assert (loss.invariance_weight, loss.variance_weight, loss.covariance_weight) == (25.0, 25.0, 1.0)


@pytest.mark.parametrize(
    ("z1_shape", "z2_shape", "message"),
    [((4, 8), (4, 9), "same shape"), ((8,), (8,), "expects \\(N, D\\)"), ((0, 8), (0, 8), "empty"),
     ((1, 8), (1, 8), "at least 2 rows")],
)
def test_vicreg_rejects_bad_shapes(z1_shape, z2_shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VICRegLoss()(torch.randn(z1_shape), torch.randn(z2_shape))


@pytest.mark.parametrize("keyword", ["invariance_weight", "variance_weight", "covariance_weight"])
def test_vicreg_rejects_negative_weights(keyword: str) -> None:
    with pytest.raises(ValueError, match=keyword):
        VICRegLoss(**{keyword: -1.0})


# ---------------------------------------------------------------- DINO


def _dino_views(generator: torch.Generator, n: int, k: int, students: int, teachers: int):
    student_views = [_randn(generator, n, k) * 2 for _ in range(students)]
    teacher_views = [_randn(generator, n, k) for _ in range(teachers)]
    return student_views, teacher_views


@pytest.mark.parametrize(("n", "k"), [(1, 3), (4, 7)])
@pytest.mark.parametrize(("students", "teachers"), [(2, 1), (2, 2), (4, 2), (5, 1)])
@pytest.mark.parametrize(("teacher_temperature", "student_temperature"), [(0.04, 0.1), (0.07, 0.1), (0.5, 1.0)])
def test_dino_matches_naive_loop(n: int, k: int, students: int, teachers: int, teacher_temperature: float,
                                 student_temperature: float) -> None:
    generator = torch.Generator().manual_seed(100 * n + 10 * students + teachers)
    student_views, teacher_views = _dino_views(generator, n, k, students, teachers)
    criterion = DINOLoss(k, student_temperature=student_temperature).double().eval()
    with torch.no_grad():
        criterion.center.copy_(_randn(generator, 1, k) * 0.3)
    loss = criterion(student_views, teacher_views, teacher_temperature=teacher_temperature)
    assert loss.dtype == torch.float64
    expected = naive_dino(student_views, teacher_views, criterion.center[0].tolist(), teacher_temperature,
                          student_temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # The same-view pairs are left out: counting them gives another value.
    with_same_view = naive_dino(student_views, teacher_views, criterion.center[0].tolist(), teacher_temperature,
                                student_temperature, include_same_view=True)
    assert abs(with_same_view - expected) > 1e-6


def test_dino_center_follows_its_rule_over_two_calls_and_is_in_the_state_dict() -> None:
    generator = torch.Generator().manual_seed(21)
    criterion = DINOLoss(5, center_momentum=0.8).double()
    assert "center" in criterion.state_dict() and criterion.center.shape == (1, 5)
    assert torch.equal(criterion.center, torch.zeros(1, 5, dtype=torch.float64))
    center = [0.0] * 5
    for call in range(2):
        student_views, teacher_views = _dino_views(generator, 3, 5, 4, 2)
        loss = criterion(student_views, teacher_views)
        # The loss used the center from before this call ...
        assert loss.item() == pytest.approx(naive_dino(student_views, teacher_views, center, 0.04, 0.1), rel=1e-10)
        # ... then c <- m c + (1 - m) * (mean of the rows of all teacher views).
        rows = [row for view in teacher_views for row in _rows(view)]
        center = [0.8 * c + 0.2 * sum(row[j] for row in rows) / len(rows) for j, c in enumerate(center)]
        torch.testing.assert_close(criterion.center, torch.tensor([center], dtype=torch.float64),
                                   rtol=0, atol=1e-14, msg=f"center after call {call + 1}")
    restored = DINOLoss(5).double()
    restored.load_state_dict(criterion.state_dict())
    assert torch.equal(restored.center, criterion.center)
    # Eval mode leaves the center alone.
    criterion.eval()
    before = criterion.center.clone()
    criterion(*_dino_views(generator, 3, 5, 4, 2))
    assert torch.equal(criterion.center, before)


@pytest.mark.parametrize("split", [(2, 3), (1, 1, 3), (5,)])
def test_dino_blocks_of_views_equal_the_views_listed_one_by_one(split: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(11)
    stacked = _randn(generator, 5, 3, 7).requires_grad_()  # 5 student views of 3 rows
    teacher_views = [_randn(generator, 3, 7) for _ in range(2)]
    criterion = DINOLoss(7, teacher_temperature=0.2, student_temperature=0.3).double().eval()
    expected = naive_dino(list(stacked.detach()), teacher_views, [0.0] * 7, 0.2, 0.3)
    blocks = list(stacked.split(list(split)))
    loss = criterion(blocks, [torch.stack(teacher_views)])
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    (gradient,) = torch.autograd.grad(loss, stacked)
    one_by_one = criterion(list(stacked.unbind()), teacher_views)
    (reference,) = torch.autograd.grad(one_by_one, stacked)
    torch.testing.assert_close(gradient, reference, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="blocks"):
        criterion([stacked[:2], stacked[2:, :2]], teacher_views)  # blocks of different N


def test_dino_gradient_reaches_students_only() -> None:
    generator = torch.Generator().manual_seed(4)
    students = [_randn(generator, 3, 6).requires_grad_() for _ in range(3)]
    teachers = [_randn(generator, 3, 6).requires_grad_() for _ in range(2)]
    DINOLoss(6)(students, teachers).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)
    assert all(t.grad is None for t in teachers)


def test_dino_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(9)
    student_views, teacher_views = _dino_views(generator, 3, 4, 3, 2)
    criterion = DINOLoss(4, teacher_temperature=0.3, student_temperature=0.5).double().eval()  # no center update
    inputs = tuple(view.requires_grad_() for view in student_views)
    assert torch.autograd.gradcheck(lambda *views: criterion(list(views), teacher_views), inputs)


def _autograd_dino(students: list[torch.Tensor], teachers: list[torch.Tensor], teacher_temperature: float,
                   student_temperature: float) -> torch.Tensor:
    """Eq. 3 through autograd's own log-softmax, pair by pair (the reference for the fused backward)."""
    terms = [-(torch.softmax(teacher / teacher_temperature, dim=1)
               * torch.log_softmax(student / student_temperature, dim=1)).sum(dim=1).mean()
             for a, teacher in enumerate(teachers) for b, student in enumerate(students) if a != b]
    return torch.stack(terms).mean()


@pytest.mark.parametrize("chunk_elements", [1, 12, 1 << 20])  # a row, two rows (and a shorter last chunk), a view
def test_dino_gradient_matches_autograd_reference_in_chunks(monkeypatch, chunk_elements: int) -> None:
    monkeypatch.setattr(dino_loss_module, "_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(31)
    global_views = _randn(generator, 2, 5, 6).requires_grad_()
    local_views = _randn(generator, 3, 5, 6).requires_grad_()
    teachers = [_randn(generator, 5, 6) for _ in range(2)]
    criterion = DINOLoss(6, student_temperature=0.2).double().eval()
    loss = criterion([global_views, local_views], [torch.stack(teachers)], teacher_temperature=0.1)
    gradients = torch.autograd.grad(loss, [global_views, local_views])
    reference = _autograd_dino([*global_views, *local_views], teachers, 0.1, 0.2)
    reference_gradients = torch.autograd.grad(reference, [global_views, local_views])
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for gradient, expected in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-13)


def test_dino_backward_can_run_twice_and_gives_bf16_gradients_to_bf16_views() -> None:
    generator = torch.Generator().manual_seed(32)
    students = [torch.randn(4, 8, generator=generator).requires_grad_() for _ in range(3)]
    teachers = [torch.randn(4, 8, generator=generator) for _ in range(2)]
    criterion = DINOLoss(8).eval()
    loss = criterion(students, teachers)
    first = torch.autograd.grad(loss, students, retain_graph=True)
    second = torch.autograd.grad(loss, students)  # the graph keeps what it needs: the same gradient again
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    low = [s.detach().bfloat16().requires_grad_() for s in students]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_gradients = torch.autograd.grad(criterion(low, [t.bfloat16() for t in teachers]), low)
    reference = torch.autograd.grad(_autograd_dino([s.float() for s in low], [t.bfloat16().float() for t in teachers],
                                                   0.04, 0.1), low)
    for gradient, expected in zip(low_gradients, reference, strict=True):
        assert gradient.dtype == torch.bfloat16
        torch.testing.assert_close(gradient.float(), expected.float(), rtol=2e-2, atol=1e-4)


def test_dino_in_float32_under_autocast() -> None:
    generator = torch.Generator().manual_seed(10)
    students = [torch.randn(4, 8, generator=generator) for _ in range(3)]
    teachers = [torch.randn(4, 8, generator=generator) for _ in range(2)]
    criterion = DINOLoss(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_students, low_teachers = [s.bfloat16() for s in students], [t.bfloat16() for t in teachers]
        loss = criterion(low_students, low_teachers)
    assert loss.dtype == torch.float32 and criterion.center.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_dino(low_students, low_teachers, [0.0] * 8, 0.04, 0.1), rel=1e-5)


@pytest.mark.parametrize(
    ("student_shapes", "teacher_shapes", "message"),
    [
        ([(4, 5), (4, 5)], [], "non-empty list"),
        ([(4, 5), (4, 6)], [(4, 5)], "student_outputs must hold"),
        ([(4, 5), (3, 5)], [(4, 5)], "student_outputs must hold"),
        ([(4, 5), (4, 5)], [(4, 5, 1)], "teacher_outputs must hold"),
        ([(4, 5), (4, 5)], [(3, 5)], "same N"),
        ([(0, 5), (0, 5)], [(0, 5)], "empty"),
        ([(4, 5), (4, 5)], [(4, 5)] * 3, "teacher views"),
        ([(4, 5)], [(4, 5)], "no pair"),
    ],
)
def test_dino_rejects_bad_views(student_shapes, teacher_shapes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DINOLoss(5)([torch.randn(s) for s in student_shapes], [torch.randn(t) for t in teacher_shapes])


def test_dino_rejects_a_stacked_tensor_and_bad_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="list"):
        DINOLoss(5)(torch.randn(2, 4, 5), [torch.randn(4, 5)])
    with pytest.raises(ValueError, match="teacher_temperature"):
        DINOLoss(5)([torch.randn(4, 5)] * 2, [torch.randn(4, 5)], teacher_temperature=0.0)
    for kwargs, message in [({"out_dim": 0}, "out_dim"), ({"out_dim": 5, "teacher_temperature": -1}, "teacher"),
                            ({"out_dim": 5, "student_temperature": 0}, "student"),
                            ({"out_dim": 5, "center_momentum": 1.5}, "center_momentum")]:
        with pytest.raises(ValueError, match=message):
            DINOLoss(**kwargs)


def test_dino_teacher_temperature_schedule() -> None:
    assert dino_teacher_temperature(0.0, 30) == pytest.approx(0.04)
    assert dino_teacher_temperature(15.0, 30) == pytest.approx(0.055)
    assert dino_teacher_temperature(7.5, 30) == pytest.approx(0.04 + 0.03 / 4)
    assert dino_teacher_temperature(30.0, 30) == pytest.approx(0.07)
    assert dino_teacher_temperature(100.0, 30) == pytest.approx(0.07)
    assert dino_teacher_temperature(0.0, 0) == pytest.approx(0.07)
    assert dino_teacher_temperature(2.0, 4, start=0.1, end=0.2) == pytest.approx(0.15)
    values = [dino_teacher_temperature(epoch / 10, 30) for epoch in range(400)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    for args, message in [((-1.0, 30), "epoch"), ((1.0, -1), "warmup"), ((1.0, 30, 0.0), "temperatures")]:
        with pytest.raises(ValueError, match=message):
            dino_teacher_temperature(*args)


# ---------------------------------------------------------------- two processes against one

WORLD = 2
GLOBAL_BATCH = 8  # 4 rows per rank
FEATURE_DIM = 6
DINO_DIM = 5


def _rank_rows(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    local = GLOBAL_BATCH // world
    return tensor[rank * local : (rank + 1) * local]


def _pair_case(rank: int, world: int, make_loss, momentum_keys: bool = False, output_dim: int = FEATURE_DIM) -> dict:
    """A two-view loss of (x1 W, x2 W) on this rank's rows, float64, with DDP-style averaged gradients."""
    generator = torch.Generator().manual_seed(0)
    x1, x2 = _randn(generator, 2, GLOBAL_BATCH, FEATURE_DIM)
    x1, x2 = x1 * torch.linspace(0.2, 1.5, FEATURE_DIM, dtype=torch.float64), x2 + 0.3 * x1
    weight = _randn(generator, FEATURE_DIM, output_dim).requires_grad_()
    x1, x2 = _rank_rows(x1, rank, world), _rank_rows(x2, rank, world)
    z2 = x2 @ weight
    if momentum_keys:  # keys from a momentum encoder: no gradient
        z2 = z2.detach()
    loss = make_loss()(x1 @ weight, z2)
    loss.backward()
    # DDP's rule: every gradient is averaged over ranks.
    return {"loss": dist.all_reduce_mean(loss.detach()), "weight_grad": dist.all_reduce_mean(weight.grad)}


def _dino_case(rank: int, world: int) -> dict:
    """Two DINO calls (3 student views, 2 teacher views) on this rank's rows: losses, gradient, center."""
    generator = torch.Generator().manual_seed(1)
    weight = _randn(generator, FEATURE_DIM, DINO_DIM).requires_grad_()
    teacher_weight = _randn(generator, FEATURE_DIM, DINO_DIM)
    criterion = DINOLoss(DINO_DIM, teacher_temperature=0.2, student_temperature=0.3, center_momentum=0.7).double()
    losses = []
    for _ in range(2):
        views = [_rank_rows(_randn(generator, GLOBAL_BATCH, FEATURE_DIM), rank, world) for _ in range(3)]
        teachers = [(view @ teacher_weight) * 4 for view in views[:2]]
        losses.append(criterion([view @ weight for view in views], teachers))
    sum(losses).backward()
    return {"loss_first": dist.all_reduce_mean(losses[0].detach()),
            "loss_second": dist.all_reduce_mean(losses[1].detach()),
            "weight_grad": dist.all_reduce_mean(weight.grad), "center": criterion.center.clone()}


def _distributed_cases(rank: int, world: int) -> dict:
    return {
        "infonce": _pair_case(rank, world, lambda: InfoNCELoss(0.5)),
        "infonce_momentum_keys": _pair_case(rank, world, lambda: InfoNCELoss(0.5), momentum_keys=True),
        "infonce_local": _pair_case(rank, world, lambda: InfoNCELoss(0.5, gather_distributed=False)),
        "barlow_twins": _pair_case(rank, world, lambda: BarlowTwinsLoss(0.1)),
        "barlow_twins_local": _pair_case(rank, world, lambda: BarlowTwinsLoss(0.1, gather_distributed=False)),
        # Outputs wider than twice the global batch: Barlow Twins takes the Gram form in one process, the
        # D x D one in two; VICReg the Gram form of the gathered batch in both.
        "barlow_twins_wide": _pair_case(rank, world, lambda: BarlowTwinsLoss(0.1), output_dim=3 * GLOBAL_BATCH),
        "vicreg": _pair_case(rank, world, VICRegLoss),
        "vicreg_wide": _pair_case(rank, world, VICRegLoss, output_dim=3 * GLOBAL_BATCH),
        "vicreg_local": _pair_case(rank, world, lambda: VICRegLoss(gather_distributed=False)),
        "dino": _dino_case(rank, world),
    }


def _worker(rank: int, world: int, tmp: str) -> None:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                                  timeout=timedelta(seconds=120))
    torch.save(_distributed_cases(rank, world), Path(tmp) / f"rank{rank}.pt")
    torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    """What each of two gloo processes computed (one spawn for the whole module)."""
    tmp = tmp_path_factory.mktemp("losses_dist")
    torch.multiprocessing.spawn(_worker, args=(WORLD, str(tmp)), nprocs=WORLD)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("case", ["infonce", "infonce_momentum_keys", "barlow_twins", "barlow_twins_wide", "vicreg",
                                  "vicreg_wide", "dino"])
def test_two_processes_equal_one_process_on_the_global_batch(two_processes, case: str) -> None:
    single = _distributed_cases(0, 1)[case]  # no process group here: one process, the whole batch
    for rank, results in enumerate(two_processes):
        two = results[case]
        figures = {key: float((two[key] - single[key]).abs().max()) for key in single}
        print(f"\n{case}, rank {rank}, 2 processes x {GLOBAL_BATCH // WORLD} vs 1 x {GLOBAL_BATCH} (float64), "
              "max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))
        assert max(figures.values()) <= 1e-6, figures
    assert float(single["weight_grad"].abs().max()) > 1e-3


@pytest.mark.parametrize("case", ["infonce", "barlow_twins", "vicreg"])
def test_local_statistics_differ_from_the_global_batch(two_processes, case: str) -> None:
    # Sanity: with gather_distributed=False each rank sees only its rows, which gives another loss.
    single = _distributed_cases(0, 1)[case]
    local = two_processes[0][f"{case}_local"]
    assert abs(float(local["loss"] - single["loss"])) > 1e-3
