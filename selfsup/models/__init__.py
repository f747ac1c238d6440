"""Backbones (images -> pooled features) and MLP heads."""

from selfsup.models.backbones import ResNetBackbone, backbone_config, build_torchvision_resnet
from selfsup.models.heads import DINOHead, byol_prediction_head, byol_projection_head, mlp, simclr_projection_head

__all__ = [
    "DINOHead",
    "ResNetBackbone",
    "backbone_config",
    "build_torchvision_resnet",
    "byol_prediction_head",
    "byol_projection_head",
    "mlp",
    "simclr_projection_head",
]
