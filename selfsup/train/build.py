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
from selfsup.data.loading import FileViewBatches, InMemoryViewBatches, PerImageViews
from selfsup.methods import Method, method_class
from selfsup.models import ResNetBackbone
from selfsup.transforms.views import IMAGENET_MEAN, IMAGENET_STD, MultiViewTransform, view_transform


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


def channel_stats_source(data: ImageData) -> str:
    """Whose statistics :func:`channel_stats` gives for ``data``, in words (for config.json and the report)."""
    if data.images is None:
        return "ImageNet (the images stream from disk, so their own are not measured)"
    return f"the training data, {data.name} (measured on its images in memory)"


def auto_image_size(config: PretrainConfig, data: ImageData) -> int:
    if config.image_size is not None:
        return config.image_size
    return max(data.image_side, 16) if data.in_memory else 224


def build_backbone(config: PretrainConfig, image_size: int) -> nn.Module:
    """The encoder (images -> pooled features, ``feature_dim`` wide): one of selfsup's ResNets, or a torchvision or
    timm model (``torchvision:NAME`` / ``timm:NAME`` with ``backbone_args``; selfsup.models.external); with
    ``backbone_weights``, its initial weights from that local file."""
    from selfsup.models.external import ExternalBackbone, check_input_size, is_external, load_backbone_weights

    if is_external(config.backbone):
        backbone = ExternalBackbone(config.backbone, config.backbone_args, seed=config.seed)
        check_input_size(backbone, image_size, config.crop_size or image_size)
    else:
        cifar_stem = config.cifar_stem if config.cifar_stem is not None else image_size <= 64
        backbone = ResNetBackbone(config.backbone, cifar_stem=cifar_stem, width=config.width)
    if config.backbone_weights is not None:
        load_backbone_weights(backbone, config.backbone_weights)
    return backbone


def build_method(config: PretrainConfig, backbone: nn.Module) -> Method:
    return method_class(config.method).from_settings(backbone, config.method_args)


def build_batches(config: PretrainConfig, data: ImageData, crop_size: int, mean, std, device: torch.device):
    """The epoch's batches of views, by the method's view recipes (two, or a multi-crop); augmented on the
    device when the images are in memory, by DataLoader workers when they stream from disk. ``crop_min_scale``
    replaces the crop scale of the views at ``crop_size`` (a multi-crop's local views keep their own)."""
    recipes = method_class(config.method).view_recipes(config.method_args, crop_size, mean, std, config.blur)
    if config.crop_min_scale is not None:
        recipes = [dataclasses.replace(view, crop_scale=(config.crop_min_scale, 1.0))
                   if view.crop_size == crop_size else view for view in recipes]
    rank, world = dist.rank(), dist.world_size()
    if data.in_memory:
        try:
            from selfsup.transforms.batched import BatchedViews, BatchedViewAugment

            make_views = BatchedViews(*map(BatchedViewAugment, recipes)).to(device)
        except ImportError:  # the per-image pipeline computes the same distributions, only slower
            make_views = PerImageViews(MultiViewTransform(*map(view_transform, recipes)))
        return InMemoryViewBatches(data, make_views, config.batch_size, config.seed, device, rank, world)
    transform = MultiViewTransform(*map(view_transform, recipes))
    return FileViewBatches(data, transform, config.batch_size, config.seed, device, config.num_workers,
                           rank, world, config.skip_bad_images)
