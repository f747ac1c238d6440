"""VICReg's loss: variance, invariance and covariance terms on two views' embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist
from selfsup.losses.shapes import check_pair


class VICRegLoss(nn.Module):
    r"""VICReg loss (Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", eqs. 1 to 6).

    For embeddings :math:`Z, Z'` of shape (N, D), with :math:`z^j` the j-th column, :math:`\bar z` the mean
    row, and both the variance and the covariance unbiased (divided by N - 1):

    .. math::
        s(Z, Z') &= \frac{1}{N D} \sum_n \| z_n - z'_n \|_2^2 \\
        v(Z) &= \frac{1}{D} \sum_j \max\left(0, 1 - \sqrt{\mathrm{Var}(z^j) + \epsilon}\right) \\
        C(Z) &= \frac{1}{N - 1} \sum_n (z_n - \bar z)(z_n - \bar z)^\top, \qquad
        c(Z) = \frac{1}{D} \sum_{i \ne j} C(Z)_{ij}^2 \\
        \ell &= \lambda\, s(Z, Z') + \mu \left[v(Z) + v(Z')\right] + \nu \left[c(Z) + c(Z')\right]

    with :math:`\epsilon` = 1e-4, the target standard deviation 1, and :math:`\lambda, \mu, \nu` =
    ``invariance_weight``, ``variance_weight``, ``covariance_weight`` (25, 25, 1 in the paper, section 4.1).
    The invariance term is the mean squared error over all N x D entries, as in the paper's code
    (``F.mse_loss``; eq. 5 is written with 1/N only), which its weight 25 goes with. That code also halves
    the two variance terms (``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``); this
    follows eq. 6 instead, so ``variance_weight=12.5`` reproduces the code.

    Across processes (``gather_distributed=True`` and world size > 1), as in the paper's code with
    ``FullGatherLayer``: variance and covariance are those of the global batch, gathered with
    :func:`selfsup.dist.gather_with_grad` (the gradient returns to the rank that produced each row), and
    invariance is this rank's own mean. The value on one rank is therefore not the global loss, but the mean of
    the ranks' values is, and DDP's gradient mean equals the single-process gradient on the global batch. This
    needs the same N on every rank. The covariance term is computed from the N x N Gram matrix when N < D
    (the paper's 8192-wide expander), which costs O(N^2 D) instead of the D x D matrix's O(N D^2).

    Shapes: ``z1`` and ``z2`` (N, D) -> scalar. Computed in float32 (float64 for float64 input), also under
    bf16/fp16 autocast.

    Raises:
        ValueError: on a negative weight, tensors that are not 2-D or differ in shape, an empty batch, or fewer
            than 2 rows in the (global) batch (the unbiased variance needs two).
    """

    epsilon = 1e-4

    def __init__(self, invariance_weight: float = 25.0, variance_weight: float = 25.0, covariance_weight: float = 1.0,
                 gather_distributed: bool = True) -> None:
        super().__init__()
        for name, value in (("invariance_weight", invariance_weight), ("variance_weight", variance_weight),
                            ("covariance_weight", covariance_weight)):
            if not value >= 0:
                raise ValueError(f"VICRegLoss: {name} must be >= 0, got {value}")
        self.invariance_weight = float(invariance_weight)
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_pair("VICRegLoss", z1, z2)

        compute_dtype = torch.promote_types(z1.dtype, torch.float32)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = z1.to(compute_dtype), z2.to(compute_dtype)
            invariance = F.mse_loss(z1, z2)  # this rank's rows; DDP's mean over ranks makes it global
            if self.gather_distributed and dist.is_distributed():
                z1, z2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
            if z1.shape[0] < 2:
                raise ValueError("VICRegLoss: the variance and covariance need at least 2 rows in the (global) "
                                 "batch, got 1")
            variance = _variance_term(z1, self.epsilon) + _variance_term(z2, self.epsilon)
            covariance = _covariance_term(z1) + _covariance_term(z2)
            return (self.invariance_weight * invariance + self.variance_weight * variance
                    + self.covariance_weight * covariance)


def _variance_term(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """v(Z), eqs. 1 and 2: hinge on the standard deviation of each column (unbiased variance)."""
    standard_deviation = torch.sqrt(z.var(dim=0, correction=1) + epsilon)
    return F.relu(1 - standard_deviation).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z), eqs. 3 and 4: squared off-diagonal entries of the unbiased covariance matrix, over D.

    The off-diagonal sum is the sum of all squared entries less the diagonal's, and the sum of all squared
    entries of the D x D matrix Zc^T Zc is that of the N x N Gram matrix Zc Zc^T (both are Zc's
    singular values to the fourth power, summed): the smaller of the two is formed, O(min(N, D) N D).
    """
    n, d = z.shape
    centered = z - z.mean(dim=0)
    gram = centered @ centered.T if n < d else centered.T @ centered
    diagonal = centered.square().sum(dim=0)  # the diagonal of Zc^T Zc
    return (gram.square().sum() - diagonal.square().sum()) / ((n - 1) ** 2 * d)
