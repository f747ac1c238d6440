"""Augmentation: SimCLR's and BYOL's view recipes, per image (PIL / uint8) and batched on device."""

from selfsup.transforms.batched import BatchedTwoViews, BatchedViewAugment, ViewParameters
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
    "BatchedTwoViews",
    "BatchedViewAugment",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TwoViewTransform",
    "ViewConfig",
    "ViewParameters",
    "byol_views",
    "eval_transform",
    "simclr_view",
    "view_transform",
]
