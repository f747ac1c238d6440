"""MLP heads: one builder, the projection and prediction heads of SimCLR and BYOL, and DINO's head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dims: Sequence[int], batch_norm: bool = True, last_batch_norm: bool = False,
        last_affine: bool = True) -> nn.Sequential:
    """Linear layers through ``dims`` = (in, hidden..., out), with BatchNorm + ReLU between them.

    The last layer has no ReLU (and BatchNorm only when ``last_batch_norm``; that BatchNorm has no scale and
    shift when ``last_affine`` is False, as in the heads of SimSiam's and MoCo v3's code). Linear layers that
    are followed by BatchNorm carry no bias, since BatchNorm's shift makes it redundant.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got dims={list(dims)}")
    if any(d < 1 for d in dims):
        raise ValueError(f"MLP sizes must be positive, got dims={list(dims)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        is_last = i == len(dims) - 2
        with_bn = batch_norm and (not is_last or last_batch_norm)
        layers.append(nn.Linear(d_in, d_out, bias=not with_bn))
        if with_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_affine or not is_last))
        if not is_last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def simclr_projection_head(input_dim: int, hidden_dim: int = 2048, output_dim: int = 128) -> nn.Sequential:
    """SimCLR's g(.): Linear -> BN -> ReLU -> Linear (Chen et al. 2020, sec. 2.1 and B.9).

    Hidden 2048 matches ResNet-50's feature size in the paper; output 128 is the paper's.
    """
    return mlp([input_dim, hidden_dim, output_dim])


def byol_projection_head(input_dim: int, hidden_dim: int = 4096, output_dim: int = 256) -> nn.Sequential:
    """BYOL's projector g: Linear(F, 4096) -> BN -> ReLU -> Linear(4096, 256) (Grill et al. 2020, 3.3)."""
    return mlp([input_dim, hidden_dim, output_dim])


def byol_prediction_head(input_dim: int = 256, hidden_dim: int = 4096, output_dim: int = 256) -> nn.Sequential:
    """BYOL's predictor q, the same shape as the projector: 256 -> 4096 -> 256 (Grill et al. 2020, 3.3)."""
    return mlp([input_dim, hidden_dim, output_dim])


class DINOHead(nn.Module):
    """DINO's projection head: an MLP (GELU) to a bottleneck, l2-normalised, then a weight-normalised linear layer
    without bias to K outputs (the paper's code, DINOHead).

    The last layer is W = g v / ||v|| row by row (weight normalisation, Salimans and Kingma 2016), g starting
    at 1 and kept there when ``norm_last_layer``. Shapes: (N, in_dim) -> ((N, K) logits, (N, bottleneck) unit
    rows).
    """

    def __init__(self, in_dim: int, output_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        modules: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            modules.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                modules.extend([nn.BatchNorm1d(d_out)] if batch_norm else [])
                modules.append(nn.GELU())
        self.mlp = nn.Sequential(*modules)
        for module in self.mlp:
            if isinstance(module, nn.Linear):  # the paper's code: truncated normal, std 0.02, zero bias
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_direction = nn.Parameter(torch.empty(output_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_direction, std=0.02)
        self.last_norm = nn.Parameter(torch.ones(output_dim, 1), requires_grad=not norm_last_layer)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.last_direction, self.last_norm) if p.requires_grad]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bottleneck = F.normalize(self.mlp(features), dim=1)
        weight = self.last_norm * F.normalize(self.last_direction, dim=1)
        return F.linear(bottleneck, weight), bottleneck
