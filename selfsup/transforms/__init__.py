"""Augmentation: SimCLR's and BYOL's view recipes, per image (PIL / uint8) and batched on device."""

from selfsup.transforms.views import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TwoViewTransform,
    ViewConfig,
    byol_views,
    eval_transform,
    simclr_view,
    view_transform,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TwoViewTransform",
    "ViewConfig",
    "byol_views",
    "eval_transform",
    "simclr_view",
    "view_transform",
]
