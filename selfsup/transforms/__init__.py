"""Augmentation of one view (a ViewConfig), per image (PIL / uint8) and batched on the training device."""

from selfsup.transforms.batched import BatchedViews, BatchedViewAugment, ViewParameters
from selfsup.transforms.views import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiViewTransform,
    ViewConfig,
    eval_transform,
    view_transform,
)

__all__ = [
    "BatchedViews",
    "BatchedViewAugment",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiViewTransform",
    "ViewConfig",
    "ViewParameters",
    "eval_transform",
    "view_transform",
]
