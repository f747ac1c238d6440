"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist
from selfsup.losses.shapes import check_pair


class NTXentLoss(nn.Module):
    r"""NT-Xent loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", eq. 1).

    For the 2N views of a batch, view i with positive partner j(i):

    .. math::
        \ell(i) = -\log \frac{\exp(\mathrm{sim}(z_i, z_{j(i)}) / t)}
                             {\sum_{k \ne i} \exp(\mathrm{sim}(z_i, z_k) / t)}

    with sim the cosine similarity; the loss is the mean of :math:`\ell` over the 2N views. Every
    view other than i and its partner is a negative, so a batch of N pairs gives 2N - 2 negatives
    per view.

    Shapes: ``z1, z2`` of shape (N, D), row n of ``z1`` and row n of ``z2`` a positive pair
    -> scalar. Computed in float32 (float64 for float64 input) with log-sum-exp, also when called
    under bf16/fp16 autocast.

    Across processes (``gather_distributed=True`` and world size > 1) the negatives come from all
    ranks: each rank computes the loss of its own 2N views against the 2NW views of the global batch,
    and the gather passes gradients back to the rank that produced each embedding (see
    :mod:`selfsup.dist`), so DDP's gradient mean equals the single-process gradient of the global
    batch.

    Raises:
        ValueError: on a non-positive temperature, tensors that are not 2-D, shapes that differ,
            or an empty batch.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NTXentLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_pair("NTXentLoss", z1, z2)
        n = z1.shape[0]

        # At least float32 whatever autocast chose: exp(sim / 0.05) spans ~e^40, beyond fp16's range.
        # float64 input stays float64 (gradcheck, references).
        compute_dtype = torch.promote_types(z1.dtype, torch.float32)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1 = F.normalize(z1.to(compute_dtype), dim=1)
            z2 = F.normalize(z2.to(compute_dtype), dim=1)
            local = torch.cat([z1, z2], dim=0)  # (2N, D), rows this rank computes the loss for

            if self.gather_distributed and dist.is_distributed():
                rank, world = dist.rank(), dist.world_size()
                # Columns ordered [z1 of all ranks, z2 of all ranks], so this rank's rows sit at an offset.
                columns = torch.cat([dist.gather_with_grad(z1), dist.gather_with_grad(z2)], dim=0)
                offset, half = rank * n, world * n
            else:
                columns, offset, half = local, 0, n

            logits = local @ columns.T / self.temperature  # (2N, 2NW)
            rows = torch.arange(2 * n, device=z1.device)
            view_in_half = rows % n
            self_column = torch.where(rows < n, offset + view_in_half, half + offset + view_in_half)
            positive_column = torch.where(rows < n, half + offset + view_in_half, offset + view_in_half)
            # A view is never its own negative: drop the self-similarity from the denominator.
            minus_infinity = torch.tensor(float("-inf"), dtype=logits.dtype, device=z1.device)
            logits = logits.index_put((rows, self_column), minus_infinity)
            return F.cross_entropy(logits, positive_column)
