"""VICReg (Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning"): keep each embedding dimension's variance up and the dimensions decorrelated.

    view1, view2 ──encoder f ─ expander h──> z1, z2
    loss = VICRegLoss(z1, z2) = lambda s(z1, z2) + mu (v(z1) + v(z2)) + nu (c(z1) + c(z2))
    (variance v and covariance c over the global batch)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses import VICRegLoss
from selfsup.methods.base import Method, check_sizes
from selfsup.methods.byol import byol_views
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import mlp


@dataclass(frozen=True)
class VICRegSettings:
    """VICReg's own options."""

    # Hidden size of the expander, two hidden layers (paper: 8192; Bardes et al. 2022, sec. 4.1).
    projection_hidden_dim: int = 8192
    # Output size of the expander, where the loss is computed (paper: 8192).
    projection_dim: int = 8192
    # lambda, the weight of the invariance term (paper: 25, sec. 4.1).
    invariance_weight: float = 25.0
    # mu, the weight of the variance terms (paper: 25; its code halves them, 12.5 here reproduces it).
    variance_weight: float = 25.0
    # nu, the weight of the covariance terms (paper: 1).
    covariance_weight: float = 1.0
    # Variance and covariance over the embeddings of all processes, the paper's global batch; off: this
    # process's only.
    gather_distributed: bool = True

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim")
        for name in ("invariance_weight", "variance_weight", "covariance_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"setting '{name}' must be >= 0, got {getattr(self, name)}")


class VICReg(Method):
    """VICReg around any backbone that maps images to (B, ``feature_dim``) features.

    The expander has three linear layers, the first two followed by BatchNorm and ReLU (sec. 4.1); the paper's code
    leaves out the last layer's bias, which the loss's centring makes inert here.
    """

    Settings = VICRegSettings
    # LARS: lr 0.2 x B/256, weight decay 1e-6, biases and BatchNorm excluded from decay and adaptation (Bardes et
    # al. 2022, appendix C; main_vicreg.py's --base-lr and --wd). The paper's cosine ends at 1/1000 of the peak,
    # the loop's at 0. SGD and AdamW are not in the paper: this project's SimCLR and BYOL values, untuned for VICReg.
    optimizer_defaults = {"lars": (0.2, 1e-6), "sgd": (0.06, 5e-4), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "lars"

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None, projection_hidden_dim: int = 8192,
                 projection_dim: int = 8192, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        self.projector = mlp([feature_dim, projection_hidden_dim, projection_hidden_dim, projection_dim])
        self.criterion = VICRegLoss(invariance_weight, variance_weight, covariance_weight,
                                    gather_distributed=gather_distributed)

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: VICRegSettings) -> VICReg:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, invariance_weight=settings.invariance_weight,
                   variance_weight=settings.variance_weight, covariance_weight=settings.covariance_weight,
                   gather_distributed=settings.gather_distributed)

    @classmethod
    def view_recipes(cls, settings: VICRegSettings, crop_size: int, mean, std, blur: bool | None):
        return byol_views(crop_size, mean, std, blur=blur)  # the paper's augmentation is BYOL's (appendix C)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        # Views go through separately, as in the paper's code: BatchNorm statistics are per view.
        features1 = self.backbone(view1)
        projection1 = self.projector(features1)
        projection2 = self.projector(self.backbone(view2))
        loss = self.criterion(projection1, projection2)
        return MethodOutput(loss=loss, features=features1.detach(),
                            embeddings=(projection1.detach(), projection2.detach()))
