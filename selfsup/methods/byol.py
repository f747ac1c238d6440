"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): predict a slow-moving target, no negatives.

    view1, view2 ──online encoder f_θ ─ projector g_θ ─ predictor q_θ──> p1, p2
                └──target encoder f_ξ ─ projector g_ξ  (no gradient) ──> z1', z2'
    loss = ( BYOLLoss(p1, z2') + BYOLLoss(p2, z1') ) / 2
    after each optimizer step: ξ <- τ ξ + (1 - τ) θ, τ following cosine_momentum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from selfsup.data.datasets import SMALL_IMAGE_SIDE
from selfsup.losses import BYOLLoss
from selfsup.methods.base import Method, check_sizes
from selfsup.methods.momentum import ema_update_, frozen_copy, scheduled_momentum
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import byol_prediction_head, byol_projection_head
from selfsup.transforms.views import CIFAR10_MEAN, CIFAR10_STD, ViewConfig


@dataclass(frozen=True)
class BYOLSettings:
    """BYOL's own options."""

    # Hidden size of the projector (paper: 4096; Grill et al. 2020, sec. 3.3).
    projection_hidden_dim: int = 4096
    # Output size of the projector and the predictor (paper: 256).
    projection_dim: int = 256
    # Hidden size of the predictor (paper: 4096).
    prediction_hidden_dim: int = 4096
    # The predictor's learning rate over the encoder's (paper: 1). BYOL works by keeping the predictor near its
    # optimum (sec. 3.2); SimSiam (Chen and He 2021, sec. 4.2) keeps its rate from decaying for that reason.
    predictor_lr_multiplier: float = 1.0
    # tau_base, the target's momentum at step 0, rising to 1 by the cosine rule (paper: 0.996, sec. 3.2).
    momentum_base: float = 0.996
    # How the momentum moves: cosine (the paper), or constant at momentum_base (0: the target is the online
    # network, 1: a fixed random target; the ablations of the paper's Table 5).
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    # false drops the predictor (an ablation: BYOL then collapses; the paper's Table 5).
    use_predictor: bool = True

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim", "prediction_hidden_dim")
        if not self.predictor_lr_multiplier > 0:
            raise ValueError(f"setting 'predictor_lr_multiplier' must be > 0, got {self.predictor_lr_multiplier}")
        if not 0 <= self.momentum_base <= 1:
            raise ValueError(f"setting 'momentum_base' must be in [0, 1], got {self.momentum_base}")


def byol_views(image_size: int, mean=CIFAR10_MEAN, std=CIFAR10_STD,
               blur: bool | None = None) -> tuple[ViewConfig, ViewConfig]:
    """BYOL's asymmetric pair (Grill et al. 2020, table 6): jitter (0.4, 0.4, 0.2, 0.1) p=0.8,
    grayscale p=0.2; blur p=1.0 / 0.1; solarize p=0.0 / 0.2. As for SimCLR, blur is off by default
    at <= 64 px (solo-learn's and lightly's CIFAR recipes do the same)."""
    if blur is None:
        blur = image_size > SMALL_IMAGE_SIDE
    common = dict(crop_size=image_size, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                  mean=tuple(mean), std=tuple(std))
    first = ViewConfig(**common, blur_probability=1.0 if blur else 0.0, solarize_probability=0.0)
    second = ViewConfig(**common, blur_probability=0.1 if blur else 0.0, solarize_probability=0.2)
    return first, second


class BYOL(Method):
    """BYOL around any backbone that maps images to (B, ``feature_dim``) features.

    Args:
        backbone: the encoder f; must have a ``feature_dim`` attribute (or pass ``feature_dim``).
        projection_hidden_dim, projection_dim: projector sizes (paper: 4096, 256).
        prediction_hidden_dim: predictor hidden size (paper: 4096).
        use_predictor: False drops the predictor (an ablation that collapses; the paper's Table 5).
        predictor_lr_multiplier: the predictor's learning rate over the rest's (paper: 1).
        momentum_base, momentum_schedule: the target's momentum rule (see :class:`BYOLSettings`).
    """

    Settings = BYOLSettings
    # LARS: lr 0.2 x B/256, weight decay 1.5e-6 (Grill et al. 2020, appendix C). SGD and AdamW: the values of
    # solo-learn's and lightly's CIFAR recipes (the paper uses LARS only).
    optimizer_defaults = {"lars": (0.2, 1.5e-6), "sgd": (0.06, 5e-4), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "lars"
    # Below a batch of 1024 (optimizer auto): SGD at 0.12 per 256, weight decay 5e-4, the best of the papers' LARS and
    # SGD at 0.06 / 0.12 (and 0.24 on digits) on held-out digits, photo crops, Fashion-MNIST and CIFAR-10
    # (benchmarks/README.md, "Short-run optimizer"); at 5-30 epochs BYOL stays near or below random init with all.
    short_run_optimizer = ("sgd", 0.12, 5e-4)

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_hidden_dim: int = 4096,
        projection_dim: int = 256,
        prediction_hidden_dim: int = 4096,
        use_predictor: bool = True,
        predictor_lr_multiplier: float = 1.0,
        momentum_base: float = 0.996,
        momentum_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__()
        if predictor_lr_multiplier != 1.0 and not use_predictor:
            raise ValueError("setting 'predictor_lr_multiplier' needs the predictor (use_predictor is false)")
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
        self.predictor_lr_multiplier = predictor_lr_multiplier
        self.momentum_base = momentum_base
        self.momentum_schedule = momentum_schedule

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: BYOLSettings) -> BYOL:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, prediction_hidden_dim=settings.prediction_hidden_dim,
                   use_predictor=settings.use_predictor, predictor_lr_multiplier=settings.predictor_lr_multiplier,
                   momentum_base=settings.momentum_base, momentum_schedule=settings.momentum_schedule)

    @classmethod
    def view_recipes(cls, settings: BYOLSettings, crop_size: int, mean, std, blur: bool | None):
        return byol_views(crop_size, mean, std, blur=blur)

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

    def learnable_parameters(self) -> list[dict]:
        predictor = {id(p) for p in self.predictor.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.predictor_lr_multiplier == 1.0:
            return [{"params": trainable}]
        return [{"params": [p for p in trainable if id(p) not in predictor]},
                {"params": [p for p in trainable if id(p) in predictor],
                 "lr_multiplier": self.predictor_lr_multiplier}]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return scheduled_momentum(self.momentum_schedule, self.momentum_base, step, total_steps)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """The EMA step of the target network; call after each optimizer step."""
        ema_update_(self.target_backbone, self.backbone, momentum)
        ema_update_(self.target_projector, self.projector, momentum)
