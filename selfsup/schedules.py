"""Learning-rate schedules and the linear scaling rule."""

from __future__ import annotations

import math


def scaled_learning_rate(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule of SimCLR and BYOL: lr = base_lr x batch_size / 256 (global batch)."""
    return base_lr * batch_size / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, final_factor: float = 0.0) -> float:
    """Factor on the peak learning rate: linear from 1/warmup_steps to 1 over ``warmup_steps``, then a
    cosine decay to ``final_factor`` at ``total_steps`` (SimCLR and BYOL: 10 warmup epochs, cosine to 0)."""
    if total_steps <= 0:
        raise ValueError(f"warmup_cosine: total_steps must be > 0, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def capped_warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int, max_share: float = 0.1) -> int:
    """Steps of linear warmup: ``warmup_epochs`` epochs (SimCLR and BYOL: 10, of runs of 100-1000 epochs), but at
    most ``max_share`` of the run's ``total_steps``, so that a short run warms up and then decays (10 warmup
    epochs in a 5-epoch run would raise the rate all run long). A warmup within the share is kept as given."""
    configured = round(warmup_epochs * steps_per_epoch)
    limit = max_share * total_steps
    if warmup_epochs * steps_per_epoch <= limit * (1 + 1e-9):  # the tolerance: 0.5 of 5 epochs is a tenth
        return min(configured, total_steps)
    return min(configured, math.floor(limit))
