"""Barlow Twins (Zbontar, Jing, Misra, LeCun and Deny 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction"): make the cross-correlation of two views' embeddings the identity.

    view1, view2 ──encoder f ─ projector g──> z1, z2
    loss = BarlowTwinsLoss(z1, z2): sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2, C over the global batch
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses import BarlowTwinsLoss
from selfsup.methods.base import Method, check_sizes
from selfsup.methods.byol import byol_views
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import mlp


@dataclass(frozen=True)
class BarlowTwinsSettings:
    """Barlow Twins' own options."""

    # Hidden size of the projection head (Barlow Twins' paper: 8192, in two hidden layers; sec. 4).
    projection_hidden_dim: int = 8192
    # Output size of the projection head, where the loss is computed (Barlow Twins' paper: 8192).
    projection_dim: int = 8192
    # lambda, the weight of the off-diagonal (redundancy) terms (paper: 5e-3, sec. 3).
    lambda_offdiag: float = 5e-3
    # The learning rate of biases and BatchNorm parameters over the weights' (paper, LARS: 0.0048 / 0.2 = 0.024).
    bias_lr_multiplier: float = 0.024
    # The loss over the views of all processes, the paper's global batch (for Barlow Twins: the means, variances
    # and cross-correlation); off: this process's views only.
    gather_distributed: bool = True

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim")
        if not self.lambda_offdiag >= 0:
            raise ValueError(f"setting 'lambda_offdiag' must be >= 0, got {self.lambda_offdiag}")
        if not self.bias_lr_multiplier > 0:
            raise ValueError(f"setting 'bias_lr_multiplier' must be > 0, got {self.bias_lr_multiplier}")


class BarlowTwins(Method):
    """Barlow Twins around any backbone that maps images to (B, ``feature_dim``) features.

    The projector has three linear layers, the first two followed by BatchNorm and ReLU (sec. 4, "Implementation
    details"); the loss standardises the output (the paper's code: ``BatchNorm1d(affine=False)``), so the last
    layer's bias, which the paper's code leaves out, is inert here.
    """

    Settings = BarlowTwinsSettings
    # LARS: lr 0.2 x B/256 for the weights and 0.0048 x B/256 for biases and BatchNorm parameters (those by
    # bias_lr_multiplier), weight decay 1.5e-6 (Zbontar et al. 2021, sec. 4). The paper's cosine ends at 1/1000 of
    # the peak, the loop's at 0. SGD and AdamW are not in the paper: this project's SimCLR and BYOL values for them,
    # untuned for Barlow Twins.
    optimizer_defaults = {"lars": (0.2, 1.5e-6), "sgd": (0.06, 5e-4), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "lars"

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None, projection_hidden_dim: int = 8192,
                 projection_dim: int = 8192, lambda_offdiag: float = 5e-3, bias_lr_multiplier: float = 0.024,
                 gather_distributed: bool = True) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        self.projector = mlp([feature_dim, projection_hidden_dim, projection_hidden_dim, projection_dim])
        self.criterion = BarlowTwinsLoss(lambda_offdiag, gather_distributed=gather_distributed)
        self.bias_lr_multiplier = bias_lr_multiplier

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: BarlowTwinsSettings) -> BarlowTwins:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, lambda_offdiag=settings.lambda_offdiag,
                   bias_lr_multiplier=settings.bias_lr_multiplier, gather_distributed=settings.gather_distributed)

    @classmethod
    def view_recipes(cls, settings: BarlowTwinsSettings, crop_size: int, mean, std, blur: bool | None):
        return byol_views(crop_size, mean, std, blur=blur)  # the paper's augmentation is BYOL's (sec. 4)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        # Views go through separately, as in the paper's code: BatchNorm statistics are per view.
        features1 = self.backbone(view1)
        projection1 = self.projector(features1)
        projection2 = self.projector(self.backbone(view2))
        loss = self.criterion(projection1, projection2)
        return MethodOutput(loss=loss, features=features1.detach(),
                            embeddings=(projection1.detach(), projection2.detach()))

    def learnable_parameters(self) -> list[dict]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.bias_lr_multiplier == 1.0:
            return [{"params": trainable}]
        # Biases and BatchNorm parameters are the one-dimensional ones, as the optimizer's own split.
        return [{"params": [p for p in trainable if p.ndim > 1]},
                {"params": [p for p in trainable if p.ndim <= 1], "lr_multiplier": self.bias_lr_multiplier}]
