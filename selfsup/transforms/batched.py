"""Batched augmentation on the training device: a whole uint8 batch (B, C, H, W) in, views out.

The same recipe as the per-image pipeline (:func:`selfsup.transforms.views.view_transform`), read
from the same :class:`~selfsup.transforms.views.ViewConfig`, with every random parameter drawn per
image from the distribution torchvision's ``transforms.v2`` uses. Parameters are drawn first, as
tensors (:meth:`BatchedViewAugment.sample_parameters`), then applied to the whole batch at once
(:meth:`BatchedViewAugment.apply`), so the distributions can be tested and a seeded call repeats.

Where it differs from the per-image reference, and why:
- Pixels stay float32 between the steps; the reference rounds to uint8 after each colour operation.
- The resize is plain bilinear (``grid_sample``). It equals torchvision's antialiased resize when the
  crop is upscaled (always the case when the images are no larger than ``crop_size``, as for CIFAR);
  when a crop is shrunk by more than 1x, torchvision's antialias filter blurs a little more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.transforms.views import ViewConfig

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
_CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 times before its center-crop fallback
# The four parts of color jitter, in the index order of torchvision's ColorJitter.fn_idx.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class ViewParameters:
    """The random parameters of one view of each image in a batch; every tensor is (B,) but
    ``jitter_order`` (B, 4). Crop boxes are in input pixels; factors are torchvision's."""

    crop_top: torch.Tensor
    crop_left: torch.Tensor
    crop_height: torch.Tensor
    crop_width: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: color jitter applied
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    jitter_order: torch.Tensor  # a permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE) per image
    grayscale: torch.Tensor  # bool
    blur: torch.Tensor  # bool
    blur_sigma: torch.Tensor
    solarize: torch.Tensor  # bool

    def to(self, device: torch.device | str) -> ViewParameters:
        return ViewParameters(**{f.name: getattr(self, f.name).to(device, non_blocking=True)
                                 for f in fields(self)})

    def rows(self, start: int, stop: int) -> ViewParameters:
        """The parameters of images ``start`` to ``stop - 1``."""
        return ViewParameters(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})


class BatchedViewAugment(nn.Module):
    """One view of every image of a batch, on the batch's device: uint8 (B, C, H, W), C in {1, 3}
    -> float32 (B, 3, S, S) normalized by ``config.mean`` and ``config.std``, S = ``config.crop_size``.

    All randomness comes from ``generator`` when one is given (on the images' device or the CPU),
    so a seeded call repeats exactly.
    """

    def __init__(self, config: ViewConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        batch, _, height, width = images.shape
        parameters = self.sample_parameters(batch, height, width, generator, device=images.device)
        return self.apply(images, parameters.to(images.device))

    def sample_parameters(self, batch: int, height: int, width: int,
                          generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> ViewParameters:
        """Draw every image's parameters, as torchvision's transforms draw them one image at a time.

        Drawn on ``generator``'s device when a generator is given, else on ``device`` (default CPU).
        """
        cfg = self.config
        device = generator.device if generator is not None else torch.device(device or "cpu")

        def uniform(low: float, high: float, *shape: int, dtype=torch.float32) -> torch.Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator, device=device, dtype=dtype)

        def bernoulli(probability: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator, device=device) < probability

        # RandomResizedCrop: 10 tries at once, keep each image's first valid one, else the fallback.
        area = height * width
        target_area = area * uniform(*cfg.crop_scale, batch, _CROP_TRIES, dtype=torch.float64)
        log_ratio = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        aspect_ratio = torch.exp(uniform(*log_ratio, batch, _CROP_TRIES, dtype=torch.float64))
        try_widths = torch.round(torch.sqrt(target_area * aspect_ratio)).long()
        try_heights = torch.round(torch.sqrt(target_area / aspect_ratio)).long()
        valid = (try_widths > 0) & (try_widths <= width) & (try_heights > 0) & (try_heights <= height)
        first_valid = valid.long().argmax(dim=1, keepdim=True)  # 0 when none is valid: replaced below
        found = valid.any(dim=1)
        fallback_height, fallback_width = _center_crop_fallback(height, width, cfg.crop_ratio)
        crop_width = torch.where(found, try_widths.gather(1, first_valid).squeeze(1), fallback_width)
        crop_height = torch.where(found, try_heights.gather(1, first_valid).squeeze(1), fallback_height)
        # randint(0, n) per image with its own n: floor of a uniform on [0, n).
        random_top = (torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
                      * (height - crop_height + 1)).long()
        random_left = (torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
                       * (width - crop_width + 1)).long()
        crop_top = torch.where(found, random_top, (height - crop_height) // 2)
        crop_left = torch.where(found, random_left, (width - crop_width) // 2)

        return ViewParameters(
            crop_top=crop_top, crop_left=crop_left, crop_height=crop_height, crop_width=crop_width,
            flip=bernoulli(cfg.flip_probability),
            jitter=bernoulli(cfg.jitter_probability),
            brightness=uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, batch),
            contrast=uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, batch),
            saturation=uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, batch),
            hue=uniform(-cfg.hue, cfg.hue, batch),
            # A uniformly random permutation per image, as torch.randperm(4) in ColorJitter.
            jitter_order=torch.rand(batch, 4, generator=generator, device=device).argsort(dim=1),
            grayscale=bernoulli(cfg.grayscale_probability),
            blur=bernoulli(cfg.blur_probability),
            blur_sigma=uniform(*cfg.blur_sigma, batch),
            solarize=bernoulli(cfg.solarize_probability),
        )

    def apply(self, images: torch.Tensor, parameters: ViewParameters) -> torch.Tensor:
        """The view of every image under the given parameters (on the images' device)."""
        _check_images(images)
        cfg = self.config
        views = _resized_crop_and_flip(images, parameters, cfg.crop_size).div_(255.0)
        if views.shape[1] == 1:
            views = views.expand(-1, 3, -1, -1).contiguous()
        views = self._color_jitter(views, parameters)
        views = _on_selected(parameters.grayscale, views, lambda x, rows: _luma(x).repeat(1, 3, 1, 1))
        if cfg.blur_probability > 0:
            views = _on_selected(parameters.blur, views, lambda x, rows: _gaussian_blur(
                x, parameters.blur_sigma[rows], cfg.blur_kernel_size))
        if cfg.solarize_probability > 0:
            # The reference solarizes uint8 pixels >= round(255 t); the same cut on the [0, 1] scale.
            threshold = round(cfg.solarize_threshold * 255) / 255
            views = _on_selected(parameters.solarize, views,
                                 lambda x, rows: torch.where(x >= threshold, 1.0 - x, x))
        mean = torch.tensor(cfg.mean, dtype=views.dtype, device=views.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=views.dtype, device=views.device).view(1, 3, 1, 1)
        return views.sub_(mean).div_(std)

    def _color_jitter(self, views: torch.Tensor, parameters: ViewParameters) -> torch.Tensor:
        cfg = self.config
        operations = {
            BRIGHTNESS: (cfg.brightness > 0, parameters.brightness, _adjust_brightness),
            CONTRAST: (cfg.contrast > 0, parameters.contrast, _adjust_contrast),
            SATURATION: (cfg.saturation > 0, parameters.saturation, _adjust_saturation),
            HUE: (cfg.hue > 0, parameters.hue, _adjust_hue),
        }
        # Step k applies, to each jittered image, the operation its permutation puts at position k.
        for position in range(4):
            for operation, (enabled, factors, function) in operations.items():
                if enabled:
                    selected = parameters.jitter & (parameters.jitter_order[:, position] == operation)
                    views = _on_selected(selected, views,
                                         lambda x, rows, f=function, v=factors: f(x, v[rows]))
        return views


class BatchedViews(nn.Module):
    """Independently augmented views of every image of a batch, one per augmentation:
    ``(augments[0](images), augments[1](images), ...)``; a single augmentation gives two views of it. Views may
    differ in size (DINO's global and local crops).

    In a distributed run each process holds rows ``first_row ...`` of a global batch of ``global_batch``
    images: the parameters of the whole global batch are drawn (a few numbers per image, cheap) and this
    process's rows kept, so the views do not depend on how the global batch is split over processes.
    """

    def __init__(self, *augments: BatchedViewAugment) -> None:
        super().__init__()
        if not augments:
            raise ValueError("BatchedViews needs at least one augmentation")
        self.augments = nn.ModuleList(augments if len(augments) > 1 else augments * 2)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None, first_row: int = 0,
                global_batch: int | None = None) -> tuple[torch.Tensor, ...]:
        _check_images(images)
        batch, _, height, width = images.shape
        global_batch = batch if global_batch is None else global_batch
        if not 0 <= first_row <= global_batch - batch:
            raise ValueError(f"BatchedViews: rows {first_row}..{first_row + batch - 1} are not inside a "
                             f"global batch of {global_batch} images")
        # Every view's parameters are drawn before any is applied (apply draws nothing).
        parameters = [view.sample_parameters(global_batch, height, width, generator, device=images.device)
                      for view in self.augments]
        rows = [p.rows(first_row, first_row + batch).to(images.device) for p in parameters]
        return tuple(view.apply(images, p) for view, p in zip(self.augments, rows))


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"batched augmentation expects a (B, C, H, W) tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"batched augmentation expects uint8 images, got {images.dtype}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"batched augmentation expects 1 or 3 channels, got {images.shape[1]}")


def _center_crop_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's crop when no try fits: the whole image, cut to the nearest allowed ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _crop_grid_axis(start: torch.Tensor, length: torch.Tensor, size: int, out: int,
                    device: torch.device) -> torch.Tensor:
    """Normalized sampling positions (B, out) along one axis of a crop resized to ``out`` pixels.

    As torch's bilinear resize (align_corners=False): output pixel u reads input position
    start + (u + 0.5) * length / out - 0.5, clamped to the crop, since torchvision crops before resizing.
    """
    start, length = start.to(torch.float32).unsqueeze(1), length.to(torch.float32).unsqueeze(1)
    centers = (torch.arange(out, device=device, dtype=torch.float32) + 0.5) / out
    position = torch.clamp(start + centers * length - 0.5, min=start, max=start + length - 1)
    return (2 * position + 1) / size - 1


def _resized_crop_and_flip(images: torch.Tensor, parameters: ViewParameters, out: int) -> torch.Tensor:
    """Crop, resize and flip in one bilinear ``grid_sample``: uint8 (B, C, H, W) -> float (B, C, S, S)
    on the 0-255 scale."""
    batch, _, height, width = images.shape
    x = _crop_grid_axis(parameters.crop_left, parameters.crop_width, width, out, images.device)
    y = _crop_grid_axis(parameters.crop_top, parameters.crop_height, height, out, images.device)
    x = torch.where(parameters.flip.unsqueeze(1), x.flip(1), x)
    grid = torch.stack([x.unsqueeze(1).expand(batch, out, out), y.unsqueeze(2).expand(batch, out, out)],
                       dim=-1)
    return F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float32).view(-1, 1, 1, 1)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W)."""
    red, green, blue = images.unbind(dim=1)
    return (red * _LUMA[0] + green * _LUMA[1] + blue * _LUMA[2]).unsqueeze(1)


def _on_selected(selected: torch.Tensor, images: torch.Tensor, function) -> torch.Tensor:
    """In place: ``images[rows] = function(images[rows], rows)`` for the rows where ``selected`` is True."""
    rows = selected.nonzero().squeeze(1)
    if rows.numel() == images.shape[0]:
        return function(images, rows)
    if rows.numel():
        images.index_copy_(0, rows, function(images.index_select(0, rows), rows))
    return images


def _blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return torch.lerp(other, images, _per_image(factors)).clamp_(0.0, 1.0)


def _adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return (images * _per_image(factors)).clamp_(0.0, 1.0)


def _adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return _blend(images, _luma(images).mean(dim=(1, 2, 3), keepdim=True), factors)


def _adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return _blend(images, _luma(images), factors)


def _adjust_hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate every pixel's HSV hue by ``shifts`` (turns, per image); saturation and value are kept.

    The same result as torchvision's RGB -> HSV -> RGB round trip (up to float rounding), in the
    closed form channel_n = V - C * clamp(min(k_n, 4 - k_n), 0, 1), k_n = (n + 6 H) mod 6 for
    n = 5, 3, 1 (R, G, B), C = V - min: about half the work.
    """
    red, green, blue = images.unbind(dim=1)
    # Pairwise maximum and minimum: faster than a reduction over the 3-channel dimension.
    value = torch.maximum(torch.maximum(red, green), blue)
    minimum = torch.minimum(torch.minimum(red, green), blue)
    chroma = value - minimum
    inverse_chroma = 1.0 / torch.where(chroma > 0, chroma, 1.0)  # gray pixels: any hue gives the gray
    # Hue in sixths of a turn, as torchvision's _rgb_to_hsv picks the sector: red, then green, then blue.
    sextant = torch.where(value == red, (green - blue) * inverse_chroma,
                          torch.where(value == green, (blue - red) * inverse_chroma + 2.0,
                                      (red - green) * inverse_chroma + 4.0))
    sextant = sextant.add_(shifts.to(images.dtype).view(-1, 1, 1) * 6.0)
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (sextant + offset).remainder_(6.0)
        channels.append(torch.addcmul(value, chroma, torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), value=-1.0))
    return torch.stack(channels, dim=1)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-image Gaussian blur (reflect padding, as torchvision), separable: one grouped convolution
    per axis with a kernel per image and channel."""
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=torch.float32) - (kernel_size - 1) / 2
    kernels = torch.softmax(-(offsets / sigmas.to(torch.float32).unsqueeze(1)) ** 2 / 2, dim=1)  # (B, k)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (B * C, k)
    half = kernel_size // 2
    padded = F.pad(images.reshape(1, batch * channels, height, width), [half] * 4, mode="reflect")
    blurred = F.conv2d(padded, kernels.view(-1, 1, kernel_size, 1), groups=batch * channels)
    blurred = F.conv2d(blurred, kernels.view(-1, 1, 1, kernel_size), groups=batch * channels)
    return blurred.view(batch, channels, height, width)
