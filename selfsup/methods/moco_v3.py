"""MoCo v3 (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"): no queue,
a predictor, and the other keys of the global batch as negatives.

    view1, view2 ──encoder f_q ─ projector ─ predictor──> q1, q2
                └──momentum encoder f_k ─ projector (no gradient)──> k1, k2
    loss = 2t ( InfoNCELoss(q1, k2) + InfoNCELoss(q2, k1) )   (Algorithm 1; the 2t as in the paper's code)
    after each optimizer step: f_k <- m f_k + (1 - m) f_q, m rising from 0.99 to 1 by the cosine rule.

The keys are gathered from all processes without gradient (the paper's ``concat_all_gather``), so each query is
scored against the keys of the whole global batch; BatchNorm is synchronised over the processes by the loop, as in
the paper's code (SyncBN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from selfsup.losses import InfoNCELoss
from selfsup.methods.base import Method, check_sizes, low_temperature_suspect
from selfsup.methods.byol import byol_views
from selfsup.methods.momentum import ema_update_, frozen_copy, scheduled_momentum
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import mlp


@dataclass(frozen=True)
class MoCoV3Settings:
    """MoCo v3's own options."""

    # Hidden size of the projector (paper: 4096; Chen, Xie and He 2021, sec. 4.1).
    projection_hidden_dim: int = 4096
    # Output size of the projector and the predictor, where the loss is computed (paper: 256).
    projection_dim: int = 256
    # Linear layers of the projector (paper: 3, sec. 4.1; the authors' ResNet-50 code uses 2).
    projection_layers: int = 3
    # Hidden size of the predictor, a 2-layer MLP (paper: 4096).
    prediction_hidden_dim: int = 4096
    # InfoNCE temperature (paper: 1.0 for ResNet-50, the code's default; 0.2 for ViT, CONFIG.md).
    temperature: float = 1.0
    # The momentum encoder's momentum at step 0, rising to 1 by the cosine rule (paper: 0.99; 0.996 at 1000 epochs).
    momentum_base: float = 0.99
    # How the momentum moves: cosine from momentum_base to 1 (the paper's --moco-m-cos), or constant.
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    # Negatives from the keys of all processes, the paper's global batch; off: this process's keys only.
    gather_distributed: bool = True

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim", "projection_layers", "prediction_hidden_dim")
        if not self.temperature > 0:
            raise ValueError(f"setting 'temperature' must be > 0, got {self.temperature}")
        if not 0 <= self.momentum_base <= 1:
            raise ValueError(f"setting 'momentum_base' must be in [0, 1], got {self.momentum_base}")


class MoCoV3(Method):
    """MoCo v3 around any backbone that maps images to (B, ``feature_dim``) features (see the module's text).

    Every layer of both heads has BatchNorm, the output ones without scale and shift (sec. 4.1, "following
    SimCLR"; ``BatchNorm1d(affine=False)`` in the paper's code).
    """

    Settings = MoCoV3Settings
    # LARS: lr 0.6 x B/256, weight decay 1e-6, the ResNet-50 100-epoch setting (the authors' main_moco.py defaults
    # and CONFIG.md; 300 and 1000 epochs use lr 0.3, and 1000 epochs weight decay 1.5e-6). AdamW: lr 1.5e-4 x B/256,
    # weight decay 0.1, the ViT setting (CONFIG.md). SGD, not in the paper: MoCo v2's values (He et al. 2020).
    optimizer_defaults = {"lars": (0.6, 1e-6), "adamw": (1.5e-4, 0.1), "sgd": (0.03, 1e-4)}
    paper_optimizer = "lars"
    paper_vit_optimizer = "adamw"

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None, projection_hidden_dim: int = 4096,
                 projection_dim: int = 256, projection_layers: int = 3, prediction_hidden_dim: int = 4096,
                 temperature: float = 1.0, momentum_base: float = 0.99,
                 momentum_schedule: Literal["cosine", "constant"] = "cosine", gather_distributed: bool = True) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        dims = [feature_dim] + [projection_hidden_dim] * (projection_layers - 1) + [projection_dim]
        self.projector = mlp(dims, last_batch_norm=True, last_affine=False)
        self.predictor = mlp([projection_dim, prediction_hidden_dim, projection_dim], last_batch_norm=True,
                             last_affine=False)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.criterion = InfoNCELoss(temperature, gather_distributed=gather_distributed)
        self.temperature = temperature
        self.momentum_base, self.momentum_schedule = momentum_base, momentum_schedule

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: MoCoV3Settings) -> MoCoV3:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, projection_layers=settings.projection_layers,
                   prediction_hidden_dim=settings.prediction_hidden_dim, temperature=settings.temperature,
                   momentum_base=settings.momentum_base, momentum_schedule=settings.momentum_schedule,
                   gather_distributed=settings.gather_distributed)

    @classmethod
    def view_recipes(cls, settings: MoCoV3Settings, crop_size: int, mean, std, blur: bool | None):
        # BYOL's asymmetric pair, as the paper's code (crop scale 0.08-1 by default; its ResNet recipes use 0.2).
        return byol_views(crop_size, mean, std, blur=blur)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        features1 = self.backbone(view1)
        projection1 = self.projector(features1)
        projection2 = self.projector(self.backbone(view2))
        query1, query2 = self.predictor(projection1), self.predictor(projection2)
        with torch.no_grad():  # keys carry no gradient, and are gathered without one
            key1 = self.key_projector(self.key_backbone(view1))
            key2 = self.key_projector(self.key_backbone(view2))
        # The paper's code scales by 2t, which makes the gradient's size independent of t.
        loss = 2 * self.temperature * (self.criterion(query1, key2) + self.criterion(query2, key1))
        return MethodOutput(loss=loss, features=features1.detach(),
                            embeddings=(projection1.detach(), projection2.detach()))

    def nonfinite_causes(self) -> list[str]:
        return low_temperature_suspect(self.criterion.temperature)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return scheduled_momentum(self.momentum_schedule, self.momentum_base, step, total_steps)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """The momentum encoder's EMA step; call after each optimizer step."""
        ema_update_(self.key_backbone, self.backbone, momentum)
        ema_update_(self.key_projector, self.projector, momentum)
