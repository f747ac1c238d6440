"""LARS and the warmup + cosine schedule as Keras 3 objects, the twins of
:class:`selfsup.train.optim.LARS` and :func:`selfsup.schedules.warmup_cosine`."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class LARS(keras.optimizers.Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You et al. 2017), as used by SimCLR and BYOL.

    The same update as :class:`selfsup.train.optim.LARS`, for each weight w with gradient g:

    .. math::
        g \leftarrow g + \lambda w, \quad
        r = \eta \frac{\|w\|}{\|g\|}\ \text{(1 when either norm is 0)}, \quad
        v \leftarrow \mu v + r\,g, \quad w \leftarrow w - \text{lr}\,v

    Variables with one dimension or fewer (biases, BatchNorm scales and shifts) are excluded from
    weight decay and from the trust ratio (plain momentum SGD), as the PyTorch
    :func:`~selfsup.train.optim.parameter_groups` does; the exclusion is by shape, so it needs no
    variable names. The weight decay is the coupled one of SimCLR's ``LARSOptimizer`` (added to
    the gradient before the trust ratio), not Keras's decoupled ``weight_decay``.

    Under ``tf.distribute`` Keras sums the replicas' gradients before this update.

    Args:
        learning_rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule``
            (e.g. :class:`WarmupCosine`), evaluated at the step count before each update.
        momentum: :math:`\mu` (0.9).
        weight_decay: :math:`\lambda` (SimCLR: 1e-6).
        trust_coefficient: :math:`\eta` (0.001 in SimCLR and BYOL).
    """

    def __init__(self, learning_rate=0.3, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, name: str = "lars", **kwargs) -> None:
        # Keras's own weight_decay is decoupled (w -= lr * wd * w): keep it off, ours is LARS's.
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1], got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        # A zero buffer makes the first update v = g, as the PyTorch LARS's buffer = g.clone().
        self.momentum_buffers = [self.add_variable_from_reference(variable, "momentum")
                                 for variable in variables]

    def update_step(self, gradient, variable, learning_rate) -> None:
        learning_rate = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        buffer = self.momentum_buffers[self._get_variable_index(variable)]
        if len(variable.shape) > 1:
            weight = tf.convert_to_tensor(variable)
            if self.lars_weight_decay != 0:
                gradient = gradient + self.lars_weight_decay * weight
            weight_norm = tf.norm(weight)
            gradient_norm = tf.norm(gradient)
            trust_ratio = tf.where((weight_norm > 0) & (gradient_norm > 0),
                                   self.trust_coefficient * weight_norm / gradient_norm,
                                   tf.ones_like(weight_norm))
            gradient = gradient * trust_ratio
        self.assign(buffer, self.momentum * buffer + gradient)
        self.assign_sub(variable, learning_rate * buffer)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.lars_weight_decay,
                      trust_coefficient=self.trust_coefficient)
        return config


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``peak_learning_rate x`` :func:`selfsup.schedules.warmup_cosine` (step), in TensorFlow ops:
    linear from peak/warmup_steps to peak over ``warmup_steps``, then a cosine decay to
    ``final_factor x peak`` at ``total_steps`` (SimCLR: 10 warmup epochs, cosine to 0)."""

    def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int,
                 final_factor: float = 0.0) -> None:
        if total_steps <= 0:
            raise ValueError(f"WarmupCosine: total_steps must be > 0, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"WarmupCosine: warmup_steps must be >= 0, got {warmup_steps}")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_factor = float(final_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = (step + 1.0) / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.minimum((step - self.warmup_steps) / decay_steps, 1.0)
        cosine = self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.peak_learning_rate * tf.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self) -> dict:
        return dict(peak_learning_rate=self.peak_learning_rate, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, final_factor=self.final_factor)
