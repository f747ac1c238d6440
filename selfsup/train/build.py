"""What a pretraining run is built from: the backbone, the method, the batches of views, the image size and
statistics, and the checks that a batch size can train. The loop, the experiments and the benchmarks build
their runs with these."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from selfsup import dist
from selfsup.config import PretrainConfig
from selfsup.data.datasets import ImageData
from selfsup.data.loading import FileTwoViewBatches, InMemoryTwoViewBatches, PerImageTwoViews
from selfsup.methods import Method, method_class
from selfsup.models import ResNetBackbone
from selfsup.transforms.views import IMAGENET_MEAN, IMAGENET_STD, TwoViewTransform, view_transform


def check_batch_size(config: PretrainConfig, images: int, world: int) -> None:
    """Refuse a batch size that cannot train: not divisible by the processes, under 2 images a process
    (BatchNorm's batch statistics need two), or larger than the data (no full batch)."""
    if config.batch_size % world:
        raise ValueError(f"setting 'batch_size' ({config.batch_size}) must be divisible by the number of "
                         f"processes ({world})")
    if config.batch_size // world < 2:
        raise ValueError(f"setting 'batch_size' ({config.batch_size}) gives {config.batch_size // world} image(s) "
                         "a process; BatchNorm needs at least 2 (its batch statistics)")
    if config.batch_size > images:
        raise ValueError(f"setting 'batch_size' ({config.batch_size}) leaves no full batch in {images} images")


def channel_stats(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of in-memory data; ImageNet's for data streamed from disk."""
    if data.images is None:
        return IMAGENET_MEAN, IMAGENET_STD
    sample = data.images[:: max(1, len(data) // 10000)].float().div_(255)
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in sample.mean(dim=(0, 2, 3)).tolist()), tuple(round(v, 4) for v in std.tolist())


def auto_image_size(config: PretrainConfig, data: ImageData) -> int:
    if config.image_size is not None:
        return config.image_size
    return max(data.image_side, 16) if data.in_memory else 224


def build_backbone(config: PretrainConfig, image_size: int) -> ResNetBackbone:
    cifar_stem = config.cifar_stem if config.cifar_stem is not None else image_size <= 64
    return ResNetBackbone(config.backbone, cifar_stem=cifar_stem, width=config.width)


def build_method(config: PretrainConfig, backbone: nn.Module) -> Method:
    return method_class(config.method).from_settings(backbone, config.method_args)


def build_batches(config: PretrainConfig, data: ImageData, crop_size: int, mean, std, device: torch.device):
    """The epoch's batches of two views, by the method's view recipes; augmented on the device when the images
    are in memory, by DataLoader workers when they stream from disk."""
    recipes = method_class(config.method).view_recipes(config.method_args, crop_size, mean, std, config.blur)
    if config.crop_min_scale is not None:
        recipes = [dataclasses.replace(view, crop_scale=(config.crop_min_scale, 1.0)) for view in recipes]
    first, second = recipes
    rank, world = dist.rank(), dist.world_size()
    if data.in_memory:
        try:
            from selfsup.transforms.batched import BatchedTwoViews, BatchedViewAugment

            two_views = BatchedTwoViews(BatchedViewAugment(first), BatchedViewAugment(second)).to(device)
        except ImportError:  # the per-image pipeline computes the same distributions, only slower
            two_views = PerImageTwoViews(TwoViewTransform(view_transform(first), view_transform(second)))
        return InMemoryTwoViewBatches(data, two_views, config.batch_size, config.seed, device, rank, world)
    transform = TwoViewTransform(view_transform(first), view_transform(second))
    return FileTwoViewBatches(data, transform, config.batch_size, config.seed, device, config.num_workers,
                              rank, world, config.skip_bad_images)
