"""One view's augmentation as a :class:`ViewConfig`, and its per-image pipeline (torchvision
``transforms.v2``), which works on PIL images and on uint8 tensors (C, H, W). The methods' recipes (SimCLR's
symmetric pair, BYOL's asymmetric one) live with their methods in :mod:`selfsup.methods`.

Every random parameter is defined once, here, in full words; the batched on-device augmentation
(:mod:`selfsup.transforms.batched`) reads the same :class:`ViewConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

# Channel statistics of the CIFAR-10 training set and of ImageNet (the usual published values).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewConfig:
    """The random augmentation that makes one view of an image.

    Applied in this order: random resized crop, horizontal flip, color jitter (random order of its
    four parts, as torchvision and SimCLR's code do), grayscale, Gaussian blur, solarize, then
    conversion to float and normalization by ``mean`` and ``std``.
    """

    crop_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    jitter_probability: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_probability: float = 0.0
    solarize_threshold: float = 0.5  # on the [0, 1] scale: pixels >= threshold are inverted
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"ViewConfig.crop_size must be >= 1, got {self.crop_size}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"ViewConfig.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"ViewConfig.crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("flip_probability", "jitter_probability", "grayscale_probability",
                     "blur_probability", "solarize_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ViewConfig.{name} must be in [0, 1], got {value}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"ViewConfig.hue must be in [0, 0.5], got {self.hue}")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("ViewConfig.brightness, contrast and saturation must be >= 0")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ViewConfig.std must be positive, got {self.std}")

    @property
    def blur_kernel_size(self) -> int:
        """Odd kernel side of about 10% of the image side (SimCLR appendix A; BYOL's 23 px at 224 px).

        As SimCLR's code (``data_util.random_blur``): ``side // 10`` made odd by ``2 * (k // 2) + 1``.
        """
        return max(3, 2 * (self.crop_size // 10 // 2) + 1)


class _ToRGBImage(v2.Transform):
    """PIL image or uint8 tensor (C, H, W) with 1, 3 or 4 channels -> uint8 RGB image tensor."""

    def forward(self, image):  # type: ignore[override]
        if isinstance(image, Image.Image):
            return v2.functional.to_image(image.convert("RGB"))
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise TypeError(f"expected a PIL image or a (C, H, W) tensor, got {type(image).__name__}")
        if image.dtype != torch.uint8:
            raise TypeError(f"image tensors must be uint8, got {image.dtype}")
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        elif image.shape[0] == 4:
            image = image[:3]
        elif image.shape[0] != 3:
            raise ValueError(f"expected 1, 3 or 4 channels, got {image.shape[0]}")
        return v2.functional.to_image(image.contiguous())


def view_transform(config: ViewConfig, normalize: bool = True) -> v2.Compose:
    """The per-image pipeline of one view: PIL or uint8 (C, H, W) in, float (3, S, S) out."""
    steps: list[v2.Transform] = [
        _ToRGBImage(),
        v2.RandomResizedCrop(config.crop_size, scale=config.crop_scale, ratio=config.crop_ratio,
                             antialias=True),
        v2.RandomHorizontalFlip(p=config.flip_probability),
        v2.RandomApply([v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)],
                       p=config.jitter_probability),
        v2.RandomGrayscale(p=config.grayscale_probability),
    ]
    if config.blur_probability > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(config.blur_kernel_size, sigma=config.blur_sigma)],
                                    p=config.blur_probability))
    if config.solarize_probability > 0:
        steps.append(v2.RandomSolarize(threshold=round(config.solarize_threshold * 255),
                                       p=config.solarize_probability))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=list(config.mean), std=list(config.std)))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def eval_transform(image_size: int, mean=CIFAR10_MEAN, std=CIFAR10_STD, resize: int | None = None) -> v2.Compose:
    """Deterministic evaluation pipeline: resize (short side), center crop, float, normalize."""
    return v2.Compose([
        _ToRGBImage(),
        v2.Resize(resize or image_size, antialias=True),
        v2.CenterCrop(image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ])


class MultiViewTransform:
    """Independent random views of one image, one per transform: ``(t1(image), t2(image), ...)``; a single
    transform gives two views of it (a symmetric pair)."""

    def __init__(self, *transforms) -> None:
        if not transforms:
            raise ValueError("MultiViewTransform needs at least one transform")
        self.transforms = transforms if len(transforms) > 1 else transforms * 2

    def __call__(self, image):
        return tuple(transform(image) for transform in self.transforms)
