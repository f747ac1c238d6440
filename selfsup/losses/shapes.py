"""The shape check every loss over a pair of (N, D) batches makes, with one wording of its errors."""

from __future__ import annotations

import torch


def check_pair(loss: str, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("z1", "z2")) -> None:
    """Raise ValueError unless ``a`` and ``b`` are non-empty (N, D) tensors of one shape; ``loss`` names the
    loss in the message and ``names`` its arguments."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{loss} expects (N, D) tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{loss}: {names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[0] < 1:
        raise ValueError(f"{loss}: the batch is empty (N = 0); it needs at least one pair")
