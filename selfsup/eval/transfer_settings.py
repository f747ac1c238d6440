"""The fine-tuning budgets of ``selfsup transfer detect`` and ``selfsup transfer segment`` (light to import: the
command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DetectionSettings:
    """A fine-tuning budget. Defaults are torchvision's reference recipe scaled to a small batch:
    SGD, momentum 0.9, weight decay 1e-4, lr 0.02 x batch / 16 = 0.32 x batch / 256 (Goyal et al. 2017's linear
    rule)."""

    # Passes over the training images.
    epochs: int = 10
    # Images per step.
    batch_size: int = 4
    # Learning rate per 256 images, as pretrain's: the peak rate of SGD (momentum 0.9) after the warmup is
    # base_lr x batch_size / 256; cosine decay to 0 (torchvision's reference: 0.02 for 16 images).
    base_lr: float = 0.32
    # SGD's weight decay.
    weight_decay: float = 1e-4
    # Steps of linear warmup (at most a fifth of the run).
    warmup_steps: int = 100
    # Short side the detector resizes to (torchvision's default: 800).
    image_size: int = 256
    # Channels of the feature pyramid.
    fpn_channels: int = 256
    # Width of the box head's two fully connected layers.
    representation_size: int = 1024
    # Proposals kept after NMS per training image (torchvision: 2000).
    proposals_per_image: int = 2000
    # RoIs sampled per training image (torchvision: 512); Penn-Fudan has ~2.5 people an image, and fewer RoIs
    # cut the CPU cost of RoIAlign's backward pass.
    rois_per_image: int = 512
    # Probability of a horizontal flip of a training image.
    flip_probability: float = 0.5
    # DataLoader workers.
    num_workers: int = 0
    # Seed of the heads' initial weights and the data order.
    seed: int = 0
    # auto (the GPU when there is one), cpu, cuda or cuda:N.
    device: str = "auto"


@dataclass(frozen=True)
class SegmentationSettings:
    """A fine-tuning budget. Defaults follow torchvision's segmentation reference: SGD, momentum 0.9,
    weight decay 1e-4, poly learning-rate decay (power 0.9), scale jitter 0.5-2, aux loss weight 0.5."""

    # Passes over the training images.
    epochs: int = 30
    # Images per step.
    batch_size: int = 8
    # Learning rate per 256 images, as pretrain's: the initial rate of SGD (momentum 0.9) is
    # base_lr x batch_size / 256, with poly decay (power 0.9).
    base_lr: float = 0.32
    # SGD's weight decay.
    weight_decay: float = 1e-4
    # Short side before the scale jitter, and the side of the square training crop.
    image_size: int = 256
    # Smallest factor of the random scale jitter.
    min_scale: float = 0.5
    # Largest factor of the random scale jitter.
    max_scale: float = 2.0
    # The segmentation head: fcn or deeplabv3 (torchvision's).
    head: Literal["fcn", "deeplabv3"] = "fcn"
    # The backbone's output stride: its last stages are dilated instead of strided below 32.
    output_stride: Literal[8, 16, 32] = 8
    # An auxiliary FCN head on layer3, its loss weighted 0.5.
    aux_loss: bool = False
    # DataLoader workers.
    num_workers: int = 0
    # Seed of the heads' initial weights and the data order.
    seed: int = 0
    # auto (the GPU when there is one), cpu, cuda or cuda:N.
    device: str = "auto"
