"""The method contract: what the training loop, the configuration and the command line ask of a method.

A method is one file in ``selfsup/methods/`` holding a subclass of :class:`Method` and its settings, and one
line in :data:`selfsup.methods.METHODS`. The loop never tests a method's name; it asks the method:

- ``Settings``: a frozen dataclass of the method's own options (head sizes, temperature, momentum, ...), each
  field with a comment that becomes its flag's help line; ``from_settings(backbone, settings)`` builds it;
- ``optimizer_defaults``: the paper's base learning rate (per 256 images) and weight decay per optimizer;
  ``paper_optimizer``, the paper's optimizer (``paper_vit_optimizer`` for a ViT where the paper has a ViT
  recipe of its own); ``short_run_optimizer`` and ``short_run_vit_optimizer``, what
  ``optimizer: auto`` takes for batches under 1024 with selfsup's ResNets and with ViTs (None: the paper's);
- ``view_recipes(settings, crop_size, mean, std, blur)``: the :class:`ViewConfig` of each of its views (two, or
  a multi-crop: DINO's global and local views, each with its own ``crop_size``);
- ``forward(*views) -> MethodOutput``, the views in the order of the recipes;
- ``learnable_parameters()``: its optimizer parameter groups (e.g. a predictor at its own learning rate);
- ``momentum_at(step, total_steps)`` and ``update_target(momentum)``: its target network's rule, if any;
- ``nonfinite_causes()``: its own suspects when the loss becomes NaN (a temperature too low);
- ``begin_step(epoch)`` and ``adjust_gradients(epoch)``: state that follows the run's progress, ``epoch`` a
  float (step / steps per epoch): DINO's teacher temperature, its last layer frozen in the first epoch.

Anything kept in buffers (a queue, a center) travels in the checkpoint with the weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.methods.output import MethodOutput
from selfsup.transforms.views import ViewConfig


class Method(nn.Module):
    """Base of every method: the hooks' defaults (one parameter group, no target network)."""

    Settings: ClassVar[type]
    # optimizer name -> (base learning rate per 256 images, weight decay), the paper's values with citations.
    optimizer_defaults: ClassVar[dict[str, tuple[float, float]]]
    # The optimizer of the paper's recipe, which optimizer auto takes at the papers' scale.
    paper_optimizer: ClassVar[str]
    # The paper's optimizer for a ViT backbone where its paper has a ViT recipe of its own (DINO, MoCo v3: AdamW);
    # None: paper_optimizer.
    paper_vit_optimizer: ClassVar[str | None] = None
    # (optimizer, base learning rate per 256 images, weight decay) that optimizer auto takes for batches under
    # 1024 with selfsup's ResNets, chosen on held-out data (benchmarks/short_run_recipes.py); None: none measured,
    # the paper's.
    short_run_optimizer: ClassVar[tuple[str, float, float] | None] = None
    # The same for a ViT backbone (torchvision:vit_* or timm:vit_* / deit_*); None: none measured, the paper's.
    short_run_vit_optimizer: ClassVar[tuple[str, float, float] | None] = None

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: Any) -> Method:
        raise NotImplementedError(f"{cls.__name__}.from_settings")

    @classmethod
    def view_recipes(cls, settings: Any, crop_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                     blur: bool | None) -> tuple[ViewConfig, ...]:
        raise NotImplementedError(f"{cls.__name__}.view_recipes")

    def forward(self, *views: torch.Tensor) -> MethodOutput:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def learnable_parameters(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer: dicts with ``params``, and optionally ``lr_multiplier`` (times
        the scheduled learning rate; default 1) and ``scheduled`` (False: the peak rate throughout, as
        SimSiam's predictor). Frozen parameters (a target network) are left out by the optimizer."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def nonfinite_causes(self) -> list[str]:
        """The method's own likely causes of a NaN or infinite loss, named first when one happens (a
        temperature too low, ...); the loop adds the general ones (learning rate, fp16, bad images)."""
        return []

    def momentum_at(self, step: int, total_steps: int) -> float | None:
        """The target network's momentum after optimizer step ``step`` of ``total_steps``; None: no target."""
        return None

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """Move the target network after an optimizer step; a method without one does nothing."""

    def begin_step(self, epoch: float) -> None:
        """Called before each step's forward pass, ``epoch`` = step / steps per epoch (0.5: half-way through
        the first epoch): a method whose loss follows the run's progress sets it here (DINO's teacher
        temperature warmup). Default: nothing."""

    def adjust_gradients(self, epoch: float) -> None:
        """Called after the backward pass, before the optimizer step (gradients already all-reduced; still scaled
        under fp16): a method may drop gradients here (DINO freezes its last layer in the first epoch by
        setting them to None, so the optimizer leaves it untouched). Default: nothing."""


def low_temperature_suspect(temperature: float) -> list[str]:
    """The suspect a contrastive method names for a NaN loss: a softmax temperature below about 0.05, where the
    loss's gradients, which grow as 1/t, can throw the weights out of range in one step (NT-Xent, InfoNCE)."""
    return [f"a temperature this low (temperature {temperature:g})"] if temperature < 0.05 else []


def check_sizes(settings, *names: str) -> None:
    """ValueError naming the first of the settings ``names`` (layer sizes, counts) that is below 1."""
    for name in names:
        if getattr(settings, name) < 1:
            raise ValueError(f"setting '{name}' must be >= 1, got {getattr(settings, name)}")
