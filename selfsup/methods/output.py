"""What a method's forward pass returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MethodOutput(NamedTuple):
    """loss: scalar to minimise; features: backbone features of view 1 (B, F), detached, for an online
    probe; embeddings: the two views' projections (B, D) each, detached, for monitoring."""

    loss: torch.Tensor
    features: torch.Tensor
    embeddings: tuple[torch.Tensor, torch.Tensor]
