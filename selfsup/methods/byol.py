"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): predict a slow-moving target, no negatives.

    view1, view2 ──online encoder f_θ ─ projector g_θ ─ predictor q_θ──> p1, p2
                └──target encoder f_ξ ─ projector g_ξ  (no gradient) ──> z1', z2'
    loss = ( BYOLLoss(p1, z2') + BYOLLoss(p2, z1') ) / 2
    after each optimizer step: ξ <- τ ξ + (1 - τ) θ, τ following cosine_momentum.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.losses import BYOLLoss
from selfsup.methods.momentum import ema_update_, frozen_copy
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import byol_prediction_head, byol_projection_head


class BYOL(nn.Module):
    """BYOL around any backbone that maps images to (B, ``feature_dim``) features.

    Args:
        backbone: the encoder f; must have a ``feature_dim`` attribute (or pass ``feature_dim``).
        projection_hidden_dim, projection_dim: projector sizes (paper: 4096, 256).
        prediction_hidden_dim: predictor hidden size (paper: 4096).
        use_predictor: False drops the predictor (an ablation that collapses; the paper's Table 5).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_hidden_dim: int = 4096,
        projection_dim: int = 256,
        prediction_hidden_dim: int = 4096,
        use_predictor: bool = True,
    ) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        self.projector = byol_projection_head(feature_dim, projection_hidden_dim, projection_dim)
        self.predictor = (
            byol_prediction_head(projection_dim, prediction_hidden_dim, projection_dim)
            if use_predictor else nn.Identity()
        )
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.criterion = BYOLLoss()

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        # Views go through separately, as in the paper's code: BatchNorm statistics are per view.
        features1 = self.backbone(view1)
        features2 = self.backbone(view2)
        projection1 = self.projector(features1)
        projection2 = self.projector(features2)
        prediction1 = self.predictor(projection1)
        prediction2 = self.predictor(projection2)
        with torch.no_grad():
            target1 = self.target_projector(self.target_backbone(view1))
            target2 = self.target_projector(self.target_backbone(view2))
        loss = (self.criterion(prediction1, target2) + self.criterion(prediction2, target1)) / 2
        return MethodOutput(loss=loss, features=features1.detach(),
                            embeddings=(projection1.detach(), projection2.detach()))

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """The EMA step of the target network; call after each optimizer step."""
        ema_update_(self.target_backbone, self.backbone, momentum)
        ema_update_(self.target_projector, self.projector, momentum)
