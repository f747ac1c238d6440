"""Augmentation of one view (a ViewConfig), per image (PIL / uint8) and batched on the training device."""

from selfsup.transforms.batched import BatchedTwoViews, BatchedViewAugment, ViewParameters
from selfsup.transforms.views import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TwoViewTransform,
    ViewConfig,
    eval_transform,
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
    "eval_transform",
    "view_transform",
]
