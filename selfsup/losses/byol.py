"""BYOL's regression loss: normalized mean squared error between prediction and target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses.shapes import check_pair


class BYOLLoss(nn.Module):
    r"""Normalized MSE of BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", eq. 2).

    .. math::
        \mathcal{L}(p, z) = \frac{1}{N}\sum_n \left\| \frac{p_n}{\|p_n\|} - \frac{z_n}{\|z_n\|} \right\|^2
                          = \frac{1}{N}\sum_n \left(2 - 2\cos(p_n, z_n)\right)

    Shapes: ``p`` (online prediction) and ``z`` (target projection), both (N, D) -> scalar in [0, 4].
    The loss itself does not detach ``z``: the BYOL method computes the target under
    ``torch.no_grad()`` and symmetrizes, ``(loss(p1, z2) + loss(p2, z1)) / 2``.

    Raises:
        ValueError: when the shapes differ, are not 2-D, or the batch is empty.
    """

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_pair("BYOLLoss", p, z, names=("p", "z"))
        # At least float32 under autocast; float64 input stays float64.
        compute_dtype = torch.promote_types(p.dtype, torch.float32)
        with torch.autocast(device_type=p.device.type, enabled=False):
            cosine = F.cosine_similarity(p.to(compute_dtype), z.to(compute_dtype), dim=1)
            return (2 - 2 * cosine).mean()
