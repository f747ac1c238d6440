"""Barlow Twins' redundancy-reduction loss on the cross-correlation matrix of two views' embeddings."""

from __future__ import annotations

import torch
from torch import nn

from selfsup import dist
from selfsup.losses.shapes import check_pair


class BarlowTwinsLoss(nn.Module):
    r"""Barlow Twins loss (Zbontar, Jing, Misra, LeCun and Deny 2021, "Barlow Twins: Self-Supervised Learning
    via Redundancy Reduction", eqs. 1 and 2).

    Each column of ``z1`` and of ``z2`` is standardised over the batch, :math:`\hat z = (z - \mu) /
    \sqrt{\sigma^2 + \epsilon}` with the batch mean :math:`\mu` and the biased variance :math:`\sigma^2` (what
    the paper's code gets from ``BatchNorm1d(affine=False)``; :math:`\epsilon` = ``eps`` = 1e-5, BatchNorm's
    default, keeps a zero-variance column finite: it standardises to zeros). Then

    .. math::
        \mathcal{C}_{ij} = \frac{1}{N} \sum_n \hat z^{(1)}_{n,i} \hat z^{(2)}_{n,j}, \qquad
        \mathcal{L} = \sum_i (1 - \mathcal{C}_{ii})^2 + \lambda \sum_i \sum_{j \ne i} \mathcal{C}_{ij}^2

    with :math:`\lambda` = ``lambda_offdiag`` (5e-3 in the paper, section 3).

    Across processes (``gather_distributed=True`` and world size > 1) N is the global batch: the means, the
    variances and :math:`\mathcal{C}` come from sums all-reduced with
    :func:`selfsup.dist.all_reduce_sum_with_grad`, so every rank returns the loss of the global batch, and the
    gradient reaches each rank's rows through all three statistics. DDP's gradient mean then equals the
    single-process gradient on the global batch. (The paper's code all-reduces :math:`\mathcal{C}` without
    gradient, which divides the gradient by the world size.) Ranks may hold different N.

    Cost: the off-diagonal sum is the sum of all squared entries less the diagonal's. In one process with
    2N < D (the paper's 8192-wide projector and batches of a few hundred per device) the sum of all squared
    entries comes from the two N x N Gram matrices, :math:`\|A^\top B\|_F^2 = \langle A A^\top, B B^\top
    \rangle`, in O(N^2 D) instead of forming the D x D matrix in O(N D^2). Across processes the D x D matrix is
    kept: its work splits over ranks by the all-reduce, where each rank would compute the global Gram whole.

    Shapes: ``z1`` and ``z2`` (N, D), row n of each a view of image n -> scalar. Computed in float32 (float64
    for float64 input), also under bf16/fp16 autocast.

    Raises:
        ValueError: on a negative ``lambda_offdiag`` or non-positive ``eps``, tensors that are not 2-D or
            differ in shape, an empty batch, or fewer than 2 rows in the (global) batch.
    """

    def __init__(self, lambda_offdiag: float = 5e-3, gather_distributed: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        if not lambda_offdiag >= 0:
            raise ValueError(f"BarlowTwinsLoss: lambda_offdiag must be >= 0, got {lambda_offdiag}")
        if not eps > 0:
            raise ValueError(f"BarlowTwinsLoss: eps must be > 0, got {eps}")
        self.lambda_offdiag = float(lambda_offdiag)
        self.gather_distributed = gather_distributed
        self.eps = float(eps)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_pair("BarlowTwinsLoss", z1, z2)
        n, d = z1.shape
        distributed = self.gather_distributed and dist.is_distributed()
        if n < 2 and not distributed:
            raise ValueError("BarlowTwinsLoss: the batch statistics need at least 2 rows, got N = 1")

        compute_dtype = torch.promote_types(z1.dtype, torch.float32)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            views = torch.stack([z1.to(compute_dtype), z2.to(compute_dtype)])  # (2, N, D)
            reduce = dist.all_reduce_sum_with_grad if distributed else _identity
            # Column sums of both views and the row count in one all-reduce.
            sums = reduce(torch.cat([views.sum(dim=1).flatten(), views.new_full((1,), n)]))
            count = sums[-1].detach()
            if distributed and n < 2 and count < 2:
                raise ValueError("BarlowTwinsLoss: the batch statistics need at least 2 rows in the global batch, "
                                 "got 1")
            centered = views - (sums[:-1] / count).view(2, 1, d)
            variance = reduce(centered.square().sum(dim=1)) / count  # (2, D), biased
            standardised = centered * torch.rsqrt(variance + self.eps).unsqueeze(1)
            first, second = standardised[0], standardised[1]
            if distributed or 2 * n >= d:
                correlation = reduce(first.T @ second) / count  # (D, D)
                diagonal = torch.diagonal(correlation)
                squared_sum = correlation.square().sum()
            else:
                # sum_ij C_ij^2 = ||A^T B||^2 / N^2 = <A A^T, B B^T> / N^2: two N x N products, not a D x D one.
                diagonal = (first * second).sum(dim=0) / n
                squared_sum = ((first @ first.T) * (second @ second.T)).sum() / n**2
            off_diagonal_squared_sum = squared_sum - diagonal.square().sum()
            return (1 - diagonal).square().sum() + self.lambda_offdiag * off_diagonal_squared_sum


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
