"""SimCLR pretraining in TensorFlow: a ``keras.Model`` with its own ``train_step``, fed by ``tf.data``,
run by ``model.fit`` under any ``tf.distribute`` strategy; features come out as numpy arrays, so the
PyTorch evaluation code (:mod:`selfsup.eval`) scores both frameworks alike.

The settings and their defaults are those of :func:`selfsup.train.loop.pretrain` for SimCLR: LARS at
``base_lr x batch_size / 256`` with weight decay 1e-6, a linear warmup then cosine decay per step,
NT-Xent at temperature 0.5, projection 2048 -> 128, the ``simclr_view`` augmentation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from selfsup.methods.simclr import simclr_view
from selfsup.schedules import capped_warmup_steps, scaled_learning_rate
from selfsup.tf.augment import augment_view, eval_preprocess
from selfsup.tf.losses import nt_xent_loss
from selfsup.tf.models import EncoderName, build_encoder, simclr_projection_head
from selfsup.tf.optim import LARS, WarmupCosine
from selfsup.transforms.views import ViewConfig


class SimCLRModel(keras.Model):
    """SimCLR (Chen et al. 2020): encoder f, projection head g, NT-Xent on the two views' projections.

    ``fit`` takes batches ``(view1, view2)`` of shape (B, S, S, 3) each. Both views go through the
    encoder in one pass, as in the paper's code and :class:`selfsup.methods.SimCLR`, so BatchNorm
    sees all 2B views. Under a strategy with R replicas each replica gets B / R pairs and takes its
    negatives from all replicas (:func:`selfsup.tf.losses.nt_xent_loss`).
    """

    def __init__(self, encoder: keras.Model, projector: keras.Model, temperature: float = 0.5,
                 gather_distributed: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"SimCLRModel: temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.projector = projector
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, images, training: bool = False):
        return self.projector(self.encoder(images, training=training), training=training)

    def simclr_loss(self, view1, view2, training: bool = True):
        """This replica's NT-Xent loss of a batch of pairs (mean over its 2B views)."""
        batch = tf.shape(view1)[0]
        projections = self(tf.concat([view1, view2], axis=0), training=training)
        z1, z2 = projections[:batch], projections[batch:]
        return nt_xent_loss(z1, z2, self.temperature, self.gather_distributed)

    def train_step(self, data):
        view1, view2 = data
        with tf.GradientTape() as tape:
            loss = self.simclr_loss(view1, view2, training=True)
            # Keras sums the replicas' gradients: dividing by their number makes the update the
            # gradient of the global mean loss, as DDP's gradient averaging does in PyTorch.
            scaled_loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (on the [0, 1] scale) of uint8 images (N, H, W, C), as the PyTorch
    loop's ``channel_stats``: from at most ~10,000 images, rounded to 4 decimals."""
    sample = images[:: max(1, len(images) // 10000)].astype(np.float64) / 255.0
    mean = sample.mean(axis=(0, 1, 2))
    std = np.maximum(sample.std(axis=(0, 1, 2), ddof=1), 1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array (N, H, W, 3), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim == 3:  # grayscale (N, H, W)
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, H, W, 3) or (N, H, W, 1), got {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    return images


def two_view_dataset(images: np.ndarray, first: ViewConfig, second: ViewConfig, batch_size: int,
                     seed: int) -> tf.data.Dataset:
    """Batches ``(view1, view2)`` over one epoch of in-memory uint8 images (N, H, W, C).

    Each epoch reshuffles the images and draws fresh augmentations; both are fixed by ``seed``
    (each image's views are a function of a per-element seed, see :mod:`selfsup.tf.augment`).
    The last incomplete batch is dropped, as in the PyTorch loop.
    """
    images = _check_images(images, "images")
    count = len(images)
    image_source = tf.data.Dataset.from_tensor_slices(images)
    shuffled = image_source.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def make_views(image, element_seed):
        seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
        return augment_view(image, first, seed1), augment_view(image, second, seed2)

    return (tf.data.Dataset.zip(shuffled, element_seeds)
            .map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def pretrain_simclr_tf(
    images: np.ndarray,
    epochs: int,
    batch_size: int = 256,
    image_size: int | None = None,
    backbone: EncoderName = "resnet18",
    width: float = 1.0,
    cifar_stem: bool | None = None,
    temperature: float = 0.5,
    base_lr: float = 0.3,
    weight_decay: float = 1e-6,
    warmup_epochs: float = 10.0,
    color_strength: float = 1.0,
    blur: bool | None = None,
    crop_min_scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    projection_hidden_dim: int = 2048,
    projection_dim: int = 128,
    gather_distributed: bool = True,
    seed: int = 0,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> keras.Model:
    """Pretrain a SimCLR encoder with TensorFlow on in-memory images; return the encoder.

    Args:
        images: uint8 array (N, H, W, 3) (or (N, H, W, 1) / (N, H, W) grayscale).
        epochs, batch_size: passes over the data and global batch of pairs (split over replicas).
        image_size: side of the views (default: the images' side).
        backbone, width, cifar_stem: see :func:`selfsup.tf.models.build_encoder`.
        temperature: NT-Xent temperature (0.5: the paper's CIFAR-10 value).
        base_lr: LARS learning rate per 256 images; the peak is ``base_lr x batch_size / 256``.
        weight_decay: LARS weight decay (biases and BatchNorm excluded).
        warmup_epochs: linear warmup before the cosine decay (both per step), at most a tenth of the run
            (:func:`selfsup.schedules.capped_warmup_steps`, as the PyTorch loop).
        color_strength, blur: the ``simclr_view`` recipe's jitter strength and blur (None: off at <= 64 px).
        crop_min_scale: smallest area fraction of the random resized crop; None: the recipe's (0.08).
        mean, std: normalization of the views (default: :func:`channel_stats` of ``images``); pass the
            same to :func:`extract_features_tf`.
        strategy: a ``tf.distribute`` strategy (default: the current one, one device). ``batch_size``
            must be divisible by its number of replicas.
        jit_compile: compile the train step with XLA.
        verbose, callbacks: passed to ``keras.Model.fit``.

    Returns:
        The encoder, a ``keras.Model`` mapping normalized images (B, S, S, 3) to features (B, F).
    """
    images = _check_images(images, "images")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size ({batch_size}) leaves no full batch in {len(images)} images")
    strategy = strategy or tf.distribute.get_strategy()
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of replicas "
                         f"({strategy.num_replicas_in_sync})")
    image_size = image_size or images.shape[1]
    if mean is None or std is None:
        mean, std = channel_stats(images)
    view = simclr_view(image_size, color_strength, mean, std, blur=blur)
    if crop_min_scale is not None:
        view = dataclasses.replace(view, crop_scale=(crop_min_scale, 1.0))

    total_steps = epochs * steps_per_epoch
    warmup_steps = capped_warmup_steps(warmup_epochs, steps_per_epoch, total_steps)
    keras.utils.set_random_seed(seed)  # initial weights
    with strategy.scope():
        encoder = build_encoder(backbone, image_size, width=width, cifar_stem=cifar_stem)
        projector = simclr_projection_head(encoder.output_shape[-1], projection_hidden_dim, projection_dim)
        model = SimCLRModel(encoder, projector, temperature, gather_distributed)
        schedule = WarmupCosine(scaled_learning_rate(base_lr, batch_size), total_steps, warmup_steps)
        model.compile(optimizer=LARS(schedule, weight_decay=weight_decay), jit_compile=jit_compile)
    dataset = two_view_dataset(images, view, view, batch_size, seed)
    model.fit(dataset, epochs=epochs, verbose=verbose, callbacks=list(callbacks), shuffle=False)
    return encoder


def extract_features_tf(encoder: keras.Model, images: np.ndarray, mean: Sequence[float],
                        std: Sequence[float], image_size: int | None = None, resize: int | None = None,
                        batch_size: int = 256) -> np.ndarray:
    """Features (N, F) float32 of uint8 images (N, H, W, 3) from a frozen encoder (BatchNorm in
    inference mode), preprocessed as :func:`selfsup.transforms.views.eval_transform`: short side
    resized to ``resize`` (default ``image_size``), center crop to ``image_size`` (default: the
    images' side), normalization by ``mean`` and ``std`` (those used in pretraining)."""
    images = _check_images(images, "images")
    image_size = image_size or images.shape[1]
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = eval_preprocess(tf.constant(images[start:start + batch_size]), image_size, mean, std, resize)
        chunks.append(encoder(batch, training=False).numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)
