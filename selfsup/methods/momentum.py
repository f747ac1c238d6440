"""The momentum (EMA) target network of BYOL: a frozen copy and its update rule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` on every parameter."""
    target = copy.deepcopy(module)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    r"""In place: :math:`\xi \leftarrow m\,\xi + (1 - m)\,\theta` for every parameter, with fused foreach ops.

    BatchNorm running statistics follow too: floating-point buffers (running mean and variance)
    get the same moving average, and integer buffers (``num_batches_tracked``) are copied. They
    matter only when the target is run in eval mode; in training mode BatchNorm normalises with
    the batch's own statistics, as in BYOL.

    ``target`` and ``online`` must have the same structure (``target`` made by :func:`frozen_copy`).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("EMA: target and online networks have different parameter lists")
    float_target, float_online = [], []
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        if target_buffer.is_floating_point():
            float_target.append(target_buffer)
            float_online.append(online_buffer)
        else:
            target_buffer.copy_(online_buffer)
    xi = target_params + float_target
    theta = [p.detach() for p in online_params] + float_online
    if not xi:
        return
    torch._foreach_mul_(xi, momentum)
    torch._foreach_add_(xi, theta, alpha=1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    r"""BYOL's momentum schedule (Grill et al. 2020, sec. 3.2):
    :math:`\tau = 1 - (1 - \tau_{base}) (\cos(\pi k / K) + 1) / 2`: ``base`` at step 0, 1 at the end."""
    if total_steps <= 0:
        raise ValueError(f"cosine_momentum: total_steps must be > 0, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def scheduled_momentum(schedule: str, base: float, step: int, total_steps: int) -> float:
    """A target network's momentum at ``step``: ``base`` throughout (``"constant"``) or :func:`cosine_momentum`
    from ``base`` to 1 (``"cosine"``)."""
    if schedule == "constant":
        return base
    return cosine_momentum(step, total_steps, base)
