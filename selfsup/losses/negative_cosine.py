"""SimSiam's loss: the negative cosine similarity between prediction and target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses.shapes import check_pair


class NegativeCosineLoss(nn.Module):
    r"""Negative cosine similarity of SimSiam (Chen and He 2021, "Exploring Simple Siamese Representation
    Learning", eq. 1).

    .. math::
        \mathcal{D}(p, z) = -\frac{1}{N}\sum_n \frac{p_n}{\|p_n\|_2} \cdot \frac{z_n}{\|z_n\|_2}

    Shapes: ``p`` (the predictor's output) and ``z`` (the other view's projection), both (N, D) -> scalar in
    [-1, 1]. The loss itself does not detach ``z``: the SimSiam method applies the stop-gradient and
    symmetrizes, ``(loss(p1, z2.detach()) + loss(p2, z1.detach())) / 2`` (eq. 3). Computed in float32
    (float64 for float64 input), also under bf16/fp16 autocast; a zero row counts as cosine 0 (the norms are
    clamped at 1e-8, as in :func:`torch.nn.functional.cosine_similarity`).

    Raises:
        ValueError: when the shapes differ, are not 2-D, or the batch is empty.
    """

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_pair("NegativeCosineLoss", p, z, names=("p", "z"))
        compute_dtype = torch.promote_types(p.dtype, torch.float32)
        with torch.autocast(device_type=p.device.type, enabled=False):
            return -F.cosine_similarity(p.to(compute_dtype), z.to(compute_dtype), dim=1).mean()
