"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

    view1, view2 ──encoder f ─ projection head g──> z1, z2
    loss = NTXentLoss(z1, z2): each view's partner is its positive, the other 2N - 2 views
    (of all ranks, when distributed) its negatives.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.losses import NTXentLoss
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import simclr_projection_head


class SimCLR(nn.Module):
    """SimCLR around any backbone that maps images to (B, ``feature_dim``) features.

    Args:
        backbone: the encoder f; must have a ``feature_dim`` attribute (or pass ``feature_dim``).
        projection_hidden_dim, projection_dim: head sizes (paper: 2048, 128).
        temperature: NT-Xent temperature (paper: 0.5 for CIFAR-10, 0.1 for ImageNet).
        gather_distributed: negatives from all ranks when distributed (the paper's global batch).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 128,
        temperature: float = 0.5,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        self.projector = simclr_projection_head(feature_dim, projection_hidden_dim, projection_dim)
        self.criterion = NTXentLoss(temperature, gather_distributed=gather_distributed)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        # One pass over both views, as the paper's code does: BatchNorm sees all 2N views.
        batch = view1.shape[0]
        features = self.backbone(torch.cat([view1, view2], dim=0))
        projections = self.projector(features)
        z1, z2 = projections[:batch], projections[batch:]
        loss = self.criterion(z1, z2)
        return MethodOutput(loss=loss, features=features[:batch].detach(),
                            embeddings=(z1.detach(), z2.detach()))

    def update_target(self, momentum: float) -> None:
        """SimCLR has no target network; present so a training loop treats methods alike."""
