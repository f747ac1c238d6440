"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

    view1, view2 ──encoder f ─ projection head g──> z1, z2
    loss = NTXentLoss(z1, z2): each view's partner is its positive, the other 2N - 2 views
    (of all ranks, when distributed) its negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.data.datasets import SMALL_IMAGE_SIDE
from selfsup.losses import NTXentLoss
from selfsup.methods.base import Method, check_sizes, low_temperature_suspect
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import simclr_projection_head
from selfsup.transforms.views import CIFAR10_MEAN, CIFAR10_STD, ViewConfig


@dataclass(frozen=True)
class SimCLRSettings:
    """SimCLR's own options."""

    # Hidden size of the projection head (paper: 2048, ResNet-50's feature size; sec. B.9).
    projection_hidden_dim: int = 2048
    # Output size of the projection head, where the loss is computed (paper: 128).
    projection_dim: int = 128
    # NT-Xent temperature (paper: 0.5 for CIFAR-10, sec. B.9; 0.1 for ImageNet at batch 4096).
    temperature: float = 0.5
    # Negatives from the views of all processes, the paper's global batch; off: this process's views only.
    gather_distributed: bool = True
    # Colour-jitter strength s of the views (paper: 1.0 on ImageNet, 0.5 in its CIFAR-10 runs; appendix A).
    color_strength: float = 1.0

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim")
        for name in ("temperature", "color_strength"):
            if not getattr(self, name) > 0:
                raise ValueError(f"setting '{name}' must be > 0, got {getattr(self, name)}")


def simclr_view(image_size: int, strength: float = 1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                blur: bool | None = None) -> ViewConfig:
    """SimCLR's augmentation (Chen et al. 2020, appendix A): crop 0.08-1, flip, jitter (0.8s, 0.8s,
    0.8s, 0.2s) with p=0.8, grayscale p=0.2, blur p=0.5 (off by default at <= 64 px, appendix B.9)."""
    if blur is None:
        blur = image_size > SMALL_IMAGE_SIDE
    return ViewConfig(
        crop_size=image_size, brightness=0.8 * strength, contrast=0.8 * strength,
        saturation=0.8 * strength, hue=min(0.2 * strength, 0.5),
        blur_probability=0.5 if blur else 0.0, mean=tuple(mean), std=tuple(std),
    )


class SimCLR(Method):
    """SimCLR around any backbone that maps images to (B, ``feature_dim``) features.

    Args:
        backbone: the encoder f; must have a ``feature_dim`` attribute (or pass ``feature_dim``).
        projection_hidden_dim, projection_dim: head sizes (paper: 2048, 128).
        temperature: NT-Xent temperature (paper: 0.5 for CIFAR-10, 0.1 for ImageNet).
        gather_distributed: negatives from all ranks when distributed (the paper's global batch).
    """

    Settings = SimCLRSettings
    # LARS: lr 0.3 x B/256, weight decay 1e-6 (Chen et al. 2020, sec. B.6 and B.9). SGD and AdamW: the values
    # of solo-learn's and lightly's CIFAR recipes (the paper uses LARS only).
    optimizer_defaults = {"lars": (0.3, 1e-6), "sgd": (0.06, 5e-4), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "lars"
    # Below a batch of 1024 (optimizer auto): SGD at 0.09 per 256, weight decay 5e-4, the best of the papers' LARS and
    # SGD at 0.06 / 0.09 / 0.12 on held-out digits, photo crops, Fashion-MNIST and CIFAR-10 (benchmarks/README.md,
    # "Short-run optimizer"; lightly's CIFAR-10 recipe is SGD 0.06 per 128 images, weight decay 5e-4).
    short_run_optimizer = ("sgd", 0.09, 5e-4)
    # With a ViT: AdamW at 5e-4 per 256, weight decay 0.05 (DeiT's and DINO's ViT rate), level with 1e-3 and ahead of
    # 1.5e-4 and the papers' LARS on the same four held-out kinds (benchmarks/README.md, "Short-run optimizer").
    short_run_vit_optimizer = ("adamw", 5e-4, 0.05)

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

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: SimCLRSettings) -> SimCLR:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, temperature=settings.temperature,
                   gather_distributed=settings.gather_distributed)

    @classmethod
    def view_recipes(cls, settings: SimCLRSettings, crop_size: int, mean, std, blur: bool | None):
        view = simclr_view(crop_size, settings.color_strength, mean, std, blur=blur)
        return view, view  # one recipe, drawn twice

    def nonfinite_causes(self) -> list[str]:
        return low_temperature_suspect(self.criterion.temperature)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        # One pass over both views, as the paper's code does: BatchNorm sees all 2N views.
        batch = view1.shape[0]
        features = self.backbone(torch.cat([view1, view2], dim=0))
        projections = self.projector(features)
        z1, z2 = projections[:batch], projections[batch:]
        loss = self.criterion(z1, z2)
        return MethodOutput(loss=loss, features=features[:batch].detach(),
                            embeddings=(z1.detach(), z2.detach()))
