"""SimSiam (Chen and He 2021, "Exploring Simple Siamese Representation Learning"): no negatives, no momentum.

    view1, view2 ──encoder f ─ projector g──> z1, z2 ─ predictor h──> p1, p2
    loss = ( NegativeCosineLoss(p1, stopgrad(z2)) + NegativeCosineLoss(p2, stopgrad(z1)) ) / 2   (eq. 3)
    the predictor keeps the peak learning rate throughout (sec. 4.2, table 1 "fix lr").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses import NegativeCosineLoss
from selfsup.methods.base import Method, check_sizes
from selfsup.methods.moco_v2 import moco_v2_view
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import mlp


@dataclass(frozen=True)
class SimSiamSettings:
    """SimSiam's own options."""

    # Hidden size of the projector (paper: 2048; Chen and He 2021, sec. 4 "Projection MLP").
    projection_hidden_dim: int = 2048
    # Output size of the projector and the predictor, where the loss is computed (paper: 2048).
    projection_dim: int = 2048
    # Linear layers of the projector (paper: 3 on ImageNet; 2 in its CIFAR-10 experiments, appendix D).
    projection_layers: int = 3
    # Hidden size of the predictor, its bottleneck (paper: 512; sec. 4 "Prediction MLP").
    prediction_hidden_dim: int = 512
    # The predictor at the peak learning rate throughout, unscheduled (paper: on; sec. 4.2, table 1 "fix lr").
    # false: it follows the schedule with the rest.
    fixed_predictor_lr: bool = True

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim", "prediction_hidden_dim")
        if self.projection_layers < 1:
            raise ValueError(f"setting 'projection_layers' must be >= 1, got {self.projection_layers}")


class SimSiam(Method):
    """SimSiam around any backbone that maps images to (B, ``feature_dim``) features.

    Args:
        backbone: the encoder f; must have a ``feature_dim`` attribute (or pass ``feature_dim``).
        projection_hidden_dim, projection_dim, projection_layers: the projector (paper: 2048, 2048, 3). BatchNorm
            follows every layer, the output one included (without scale and shift, as in the paper's code).
        prediction_hidden_dim: the predictor's bottleneck, projection_dim -> 512 -> projection_dim (paper).
        fixed_predictor_lr: keep the predictor's learning rate at its peak (paper: True).
    """

    Settings = SimSiamSettings
    # SGD: lr 0.05 x B/256, weight decay 1e-4, momentum 0.9 (Chen and He 2021, sec. 4 "Optimizer"; its CIFAR-10
    # runs: 0.03, 5e-4, appendix D). The paper uses LARS only at batch >= 1024 (sec. 4.3) without its rate; LARS
    # and AdamW here are BYOL's LARS values and this project's AdamW default, untuned for SimSiam.
    optimizer_defaults = {"sgd": (0.05, 1e-4), "lars": (0.2, 1.5e-6), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "sgd"

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None, projection_hidden_dim: int = 2048,
                 projection_dim: int = 2048, projection_layers: int = 3, prediction_hidden_dim: int = 512,
                 fixed_predictor_lr: bool = True) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        dims = [feature_dim] + [projection_hidden_dim] * (projection_layers - 1) + [projection_dim]
        self.projector = mlp(dims, last_batch_norm=True, last_affine=False)
        self.predictor = mlp([projection_dim, prediction_hidden_dim, projection_dim])
        self.criterion = NegativeCosineLoss()
        self.fixed_predictor_lr = fixed_predictor_lr

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: SimSiamSettings) -> SimSiam:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, projection_layers=settings.projection_layers,
                   prediction_hidden_dim=settings.prediction_hidden_dim,
                   fixed_predictor_lr=settings.fixed_predictor_lr)

    @classmethod
    def view_recipes(cls, settings: SimSiamSettings, crop_size: int, mean, std, blur: bool | None):
        view = moco_v2_view(crop_size, mean, std, blur=blur)  # SimSiam's augmentation is MoCo v2's (appendix A)
        return view, view

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        # Views go through separately, as in the paper's code: BatchNorm statistics are per view.
        features1 = self.backbone(view1)
        projection1 = self.projector(features1)
        projection2 = self.projector(self.backbone(view2))
        prediction1, prediction2 = self.predictor(projection1), self.predictor(projection2)
        # The stop-gradient (sec. 3): the targets z are constants, gradients reach the encoder through p only.
        loss = (self.criterion(prediction1, projection2.detach())
                + self.criterion(prediction2, projection1.detach())) / 2
        return MethodOutput(loss=loss, features=features1.detach(),
                            embeddings=(projection1.detach(), projection2.detach()))

    def learnable_parameters(self) -> list[dict]:
        if not self.fixed_predictor_lr:
            return super().learnable_parameters()
        predictor = {id(p) for p in self.predictor.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        # The scheduled group first: the loop reports the first group's learning rate.
        return [{"params": [p for p in trainable if id(p) not in predictor]},
                {"params": [p for p in trainable if id(p) in predictor], "scheduled": False}]
