"""The supervised fine-tuning step that fine-tuning (classification), detection and segmentation share."""

from __future__ import annotations

from collections.abc import Callable

import torch


class SupervisedStep:
    """One optimizer step on a supervised loss, at the learning rate ``lr_at(step)``.

    Checks the loss first: a NaN or infinite loss stops with a ``FloatingPointError`` naming the task, the
    step and the learning rate (``describe(loss)`` may add the loss's parts), before it reaches the weights.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], task: str) -> None:
        self.optimizer, self.lr_at, self.task = optimizer, lr_at, task
        self.step = 0

    def __call__(self, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> float:
        """Backward and step on ``loss``; returns its value (one device sync per step)."""
        lr = self.lr_at(self.step)
        if not torch.isfinite(loss):
            detail = f" ({ {k: round(v.item(), 3) for k, v in parts.items()} })" if parts else ""
            raise FloatingPointError(f"{self.task} loss is {loss.item()} at step {self.step}{detail}; lower the "
                                     f"learning rate (lr={lr:.4g})")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()
