"""MLP heads: one builder, and the projection and prediction heads of SimCLR and BYOL."""

from __future__ import annotations

from collections.abc import Sequence

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
