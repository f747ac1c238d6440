"""The SimCLR / BYOL view augmentation in TensorFlow ops, driven by the same
:class:`selfsup.transforms.views.ViewConfig` as the PyTorch pipeline.

Per image, channels last: uint8 (H, W, 3) in, float32 (S, S, 3) out, in the order of
:func:`selfsup.transforms.views.view_transform`: random resized crop, horizontal flip, color jitter
(its four parts in random order), grayscale, Gaussian blur, solarize, normalization. Every random
draw follows torchvision's ``transforms.v2`` (the crop's ten tries and central fallback, the jitter
factors, the blur's sigma), and the photometric operations are torchvision's formulas (multiplicative
brightness, contrast and saturation blended with the grayscale image, not ``tf.image``'s additive
brightness and per-channel contrast). One difference: torchvision runs the photometric steps on
uint8 images and rounds after each, these run on floats in [0, 1].

Randomness is stateless: every function takes a ``seed`` (shape (2,) integers), so a view is a pure
function of its image and seed, and ``tf.data`` may run them in parallel without changing results.
"""

from __future__ import annotations

import math

import tensorflow as tf

from selfsup.transforms.views import ViewConfig

# ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights.
_LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def _uniform(seed: tf.Tensor, low: float, high: float, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def _split(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """(..., H, W, 3) -> (..., H, W, 1) luma."""
    return tf.reduce_sum(image * tf.constant(_LUMA_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def adjust_brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """torchvision's: the image times ``factor``, clipped to [0, 1] (float images)."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """torchvision's: blend with the mean of the grayscale image (one value per image)."""
    mean = tf.reduce_mean(grayscale(image), axis=(-3, -2, -1), keepdims=True)
    return tf.clip_by_value(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor) -> tf.Tensor:
    """torchvision's: blend with the grayscale image."""
    return tf.clip_by_value(factor * image + (1.0 - factor) * grayscale(image), 0.0, 1.0)


def adjust_hue(image: tf.Tensor, shift) -> tf.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) in HSV, as torchvision's adjust_hue."""
    return tf.clip_by_value(tf.image.adjust_hue(image, shift), 0.0, 1.0)


def gaussian_blur(image: tf.Tensor, kernel_size: int, sigma) -> tf.Tensor:
    """Separable Gaussian blur of an (H, W, C) image with reflect padding, as torchvision's."""
    half = (kernel_size - 1) / 2
    offsets = tf.linspace(-half, half, kernel_size)
    kernel = tf.exp(-0.5 * tf.square(tf.cast(offsets, tf.float32) / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = image.shape[-1]
    pad = kernel_size // 2
    padded = tf.pad(image[None], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(kernel, (kernel_size, 1, 1, 1)), (1, 1, channels, 1))
    columns = tf.tile(tf.reshape(kernel, (1, kernel_size, 1, 1)), (1, 1, channels, 1))
    blurred = tf.nn.depthwise_conv2d(padded, rows, strides=(1, 1, 1, 1), padding="VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, columns, strides=(1, 1, 1, 1), padding="VALID")
    return blurred[0]


def random_resized_crop_box(height, width, scale: tuple[float, float], ratio: tuple[float, float],
                            seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(top, left, crop height, crop width) drawn as torchvision's RandomResizedCrop does: up to ten
    tries of an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; the first
    crop that fits wins, else a central crop with the ratio clamped to ``ratio``."""
    tries = 10
    area_seed, ratio_seed, top_seed, left_seed = _split(seed, 4)
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    target_area = height_f * width_f * _uniform(area_seed, scale[0], scale[1], (tries,))
    aspect = tf.exp(_uniform(ratio_seed, math.log(ratio[0]), math.log(ratio[1]), (tries,)))
    # tf.round rounds half to even, as Python's round in torchvision.
    crop_widths = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    crop_heights = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (crop_widths > 0) & (crop_widths <= width) & (crop_heights > 0) & (crop_heights <= height)
    first_fit = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    in_ratio = width_f / height_f
    fallback_width = tf.where(in_ratio > ratio[1], tf.cast(tf.round(height_f * ratio[1]), tf.int32), width)
    fallback_height = tf.where(in_ratio < ratio[0], tf.cast(tf.round(width_f / ratio[0]), tf.int32), height)
    any_fit = tf.reduce_any(fits)
    crop_height = tf.where(any_fit, crop_heights[first_fit], fallback_height)
    crop_width = tf.where(any_fit, crop_widths[first_fit], fallback_width)
    random_top = tf.random.stateless_uniform((), top_seed, 0, height - crop_height + 1, dtype=tf.int32)
    random_left = tf.random.stateless_uniform((), left_seed, 0, width - crop_width + 1, dtype=tf.int32)
    top = tf.where(any_fit, random_top, (height - crop_height) // 2)
    left = tf.where(any_fit, random_left, (width - crop_width) // 2)
    return top, left, crop_height, crop_width


def _color_jitter(image: tf.Tensor, config: ViewConfig, seed: tf.Tensor) -> tf.Tensor:
    """torchvision's ColorJitter: factors drawn once, the four operations in a random order."""
    order_seed, brightness_seed, contrast_seed, saturation_seed, hue_seed = _split(seed, 5)
    operations = [
        (config.brightness, lambda x: adjust_brightness(
            x, _uniform(brightness_seed, max(0.0, 1 - config.brightness), 1 + config.brightness))),
        (config.contrast, lambda x: adjust_contrast(
            x, _uniform(contrast_seed, max(0.0, 1 - config.contrast), 1 + config.contrast))),
        (config.saturation, lambda x: adjust_saturation(
            x, _uniform(saturation_seed, max(0.0, 1 - config.saturation), 1 + config.saturation))),
        (config.hue, lambda x: adjust_hue(x, _uniform(hue_seed, -config.hue, config.hue))),
    ]
    # A part with strength 0 is skipped, as torchvision does.
    branches = [operation if strength > 0 else (lambda x: x) for strength, operation in operations]
    order = tf.argsort(tf.random.stateless_uniform((4,), order_seed))
    for position in range(4):
        image = tf.switch_case(order[position], [lambda b=b, x=image: b(x) for b in branches])
    return image


def _maybe(probability: float, seed: tf.Tensor, apply, image: tf.Tensor) -> tf.Tensor:
    if probability <= 0:
        return image
    if probability >= 1:
        return apply(image)
    return tf.cond(_uniform(seed, 0.0, 1.0) < probability, lambda: apply(image), lambda: image)


def augment_view(image: tf.Tensor, config: ViewConfig, seed: tf.Tensor, normalize: bool = True) -> tf.Tensor:
    """One random view of one image: uint8 (H, W, 3) (or (H, W, 1), repeated to RGB) -> float32
    (S, S, 3) with S = ``config.crop_size``; in [0, 1] when ``normalize`` is False, else normalized
    by ``config.mean`` and ``config.std``."""
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"augment_view expects a (H, W, 1 or 3) image, got shape {image.shape}")
    if image.dtype != tf.uint8:
        raise TypeError(f"augment_view expects uint8 images, got {image.dtype.name}")
    seeds = _split(seed, 10)
    image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
    if image.shape[-1] == 1:
        image = tf.tile(image, (1, 1, 3))
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top, left, crop_height, crop_width = random_resized_crop_box(
        height, width, config.crop_scale, config.crop_ratio, seeds[0])
    image = image[top:top + crop_height, left:left + crop_width]
    image = tf.image.resize(image, (config.crop_size, config.crop_size), method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = _maybe(config.flip_probability, seeds[1], tf.image.flip_left_right, image)
    image = _maybe(config.jitter_probability, seeds[2], lambda x: _color_jitter(x, config, seeds[3]), image)
    image = _maybe(config.grayscale_probability, seeds[4], lambda x: tf.tile(grayscale(x), (1, 1, 3)), image)
    image = _maybe(config.blur_probability, seeds[5], lambda x: gaussian_blur(
        x, config.blur_kernel_size, _uniform(seeds[6], *config.blur_sigma)), image)
    image = _maybe(config.solarize_probability, seeds[7],
                   lambda x: tf.where(x >= config.solarize_threshold, 1.0 - x, x), image)
    image = tf.ensure_shape(image, (config.crop_size, config.crop_size, 3))
    if normalize:
        image = (image - tf.constant(config.mean)) / tf.constant(config.std)
    return image


def eval_preprocess(images: tf.Tensor, image_size: int, mean, std, resize: int | None = None) -> tf.Tensor:
    """Deterministic evaluation input, as :func:`selfsup.transforms.views.eval_transform`: uint8
    (B, H, W, 3) -> float32 (B, S, S, 3): short side resized to ``resize`` (default ``image_size``),
    center crop, normalization."""
    images = tf.image.convert_image_dtype(images, tf.float32)
    if images.shape[-1] == 1:
        images = tf.tile(images, (1, 1, 1, 3))
    target = resize or image_size
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    short = tf.minimum(height, width)
    needs_resize = tf.not_equal(short, target)
    scale = tf.cast(target, tf.float32) / tf.cast(short, tf.float32)
    new_height = tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32)
    new_width = tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32)
    images = tf.cond(needs_resize,
                     lambda: tf.image.resize(images, (new_height, new_width), antialias=True),
                     lambda: images)
    images = tf.image.resize_with_crop_or_pad(images, image_size, image_size)
    return (images - tf.constant(tuple(mean), tf.float32)) / tf.constant(tuple(std), tf.float32)
