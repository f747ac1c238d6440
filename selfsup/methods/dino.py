"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): self-distillation
with no labels, a student matching an EMA teacher over multi-crop views.

    2 global + V local views ──student f_θ ─ head h_θ──> g_s (all views)
    2 global views ──teacher f_ξ ─ head h_ξ (no gradient)──> g_t
    loss = DINOLoss(g_s, g_t): cross-entropy of softmax((g_t - c) / τ_t) and softmax(g_s / τ_s) over all pairs of
           different views (eq. 3); c <- 0.9 c + 0.1 mean(g_t) (eq. 4); τ_t warms up 0.04 -> 0.07
    after each optimizer step: ξ <- m ξ + (1 - m) θ, m from 0.996 to 1 by the cosine rule;
    the head's last layer is frozen during the first epoch (the paper's code: its gradients are dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.data.images import SMALL_IMAGE_SIDE
from selfsup.losses import DINOLoss, dino_teacher_temperature
from selfsup.methods.base import Method, check_sizes
from selfsup.methods.momentum import ema_update_, frozen_copy, scheduled_momentum
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import DINOHead
from selfsup.transforms.views import ViewConfig


@dataclass(frozen=True)
class DINOSettings:
    """DINO's own options (the defaults of the paper's code, main_dino.py, unless said)."""

    # Hidden size of the head's MLP (paper: 2048; Caron et al. 2021, appendix "Projection head").
    head_hidden_dim: int = 2048
    # Bottleneck of the head, l2-normalised before the last layer (paper: 256).
    bottleneck_dim: int = 256
    # K, the output size of the head, the number of "prototypes" (paper: 65536; smaller for small data).
    output_dim: int = 65536
    # Linear layers of the head's MLP before the bottleneck's output (paper: 3).
    head_layers: int = 3
    # BatchNorm in the head's MLP (paper's code: off by default, on in its ResNet-50 recipe is optional).
    head_batch_norm: bool = False
    # Fix the weight-normalised last layer's norm at 1 (paper: on, "it stabilises training").
    norm_last_layer: bool = True
    # Epochs during which the last layer is frozen (paper's code: 1; "it stabilises the beginning of training").
    freeze_last_layer_epochs: float = 1.0
    # Student temperature tau_s (paper: 0.1).
    student_temperature: float = 0.1
    # Teacher temperature tau_t at the start of the warmup (paper: 0.04).
    warmup_teacher_temperature: float = 0.04
    # Teacher temperature after the warmup (paper: 0.04 -> 0.07; section 4.1 and appendix).
    teacher_temperature: float = 0.07
    # Epochs of the teacher temperature's linear warmup (paper: 30).
    teacher_temperature_warmup_epochs: float = 30.0
    # Momentum m of the teacher's center (paper: 0.9, eq. 4).
    center_momentum: float = 0.9
    # The teacher's EMA momentum at step 0, rising to 1 by the cosine rule (paper: 0.996).
    momentum_base: float = 0.996
    # Number of local views (paper's code: 8; 0: the two global views only).
    local_views: int = 8
    # Side of the local views; None: 96/224 of the global views' side (the paper's 96 px at 224 px).
    local_crop_size: int | None = None
    # Scale range of the local crops (paper's code: 0.05 to 0.4); the global views' range is crop_min_scale
    # (DINO's recipe: 0.4 to 1).
    local_crop_scale: tuple[float, float] = (0.05, 0.4)

    def __post_init__(self) -> None:
        check_sizes(self, "head_hidden_dim", "bottleneck_dim", "output_dim")
        if self.head_layers < 1:
            raise ValueError(f"setting 'head_layers' must be >= 1, got {self.head_layers}")
        for name in ("student_temperature", "warmup_teacher_temperature", "teacher_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"setting '{name}' must be > 0, got {getattr(self, name)}")
        for name in ("freeze_last_layer_epochs", "teacher_temperature_warmup_epochs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"setting '{name}' must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.center_momentum <= 1 or not 0 <= self.momentum_base <= 1:
            raise ValueError("settings 'center_momentum' and 'momentum_base' must be in [0, 1]")
        if self.local_views < 0:
            raise ValueError(f"setting 'local_views' must be >= 0, got {self.local_views}")
        if self.local_crop_size is not None and self.local_crop_size < 1:
            raise ValueError(f"setting 'local_crop_size' must be >= 1, got {self.local_crop_size}")
        if not 0 < self.local_crop_scale[0] <= self.local_crop_scale[1] <= 1:
            raise ValueError(f"setting 'local_crop_scale' must satisfy 0 < low <= high <= 1, got "
                             f"{self.local_crop_scale}")


def dino_views(settings: DINOSettings, crop_size: int, mean, std, blur: bool | None = None) -> tuple[ViewConfig, ...]:
    """DINO's multi-crop (the paper's code, DataAugmentationDINO): flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8,
    grayscale p=0.2 on every view; global view 1 blurred (p=1.0), global view 2 blurred p=0.1 and solarized
    p=0.2, crops of 40-100% of the image; local views blurred p=0.5, crops of 5-40%. As for BYOL, blur is off by
    default at <= 64 px."""
    if blur is None:
        blur = crop_size > SMALL_IMAGE_SIDE
    common = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, mean=tuple(mean), std=tuple(std))
    first = ViewConfig(crop_size, crop_scale=(0.4, 1.0), blur_probability=1.0 if blur else 0.0, **common)
    second = ViewConfig(crop_size, crop_scale=(0.4, 1.0), blur_probability=0.1 if blur else 0.0,
                        solarize_probability=0.2, **common)
    local_size = settings.local_crop_size or max(1, round(crop_size * 96 / 224))
    local = ViewConfig(local_size, crop_scale=settings.local_crop_scale, blur_probability=0.5 if blur else 0.0,
                       **common)
    return (first, second, *[local] * settings.local_views)


class DINO(Method):
    """DINO around any backbone that maps images to (B, ``feature_dim``) features; see :class:`DINOSettings`."""

    Settings = DINOSettings
    # SGD: lr 0.03 x B/256, weight decay 1e-4 (the paper's code, README, ResNet-50 recipe); AdamW: 5e-4 x B/256,
    # 0.04 (the ViT recipe; its cosine rise of weight decay to 0.4 is not done here: decay stays at 0.04); LARS:
    # BYOL's values, untuned for DINO.
    optimizer_defaults = {"sgd": (0.03, 1e-4), "adamw": (5e-4, 0.04), "lars": (0.2, 1.5e-6)}
    paper_optimizer = "sgd"
    paper_vit_optimizer = "adamw"

    def __init__(self, backbone: nn.Module, settings: DINOSettings = DINOSettings(),
                 feature_dim: int | None = None) -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.settings = settings
        self.backbone = backbone
        self.head = DINOHead(feature_dim, settings.output_dim, settings.head_hidden_dim, settings.bottleneck_dim,
                             settings.head_layers, settings.head_batch_norm, settings.norm_last_layer)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(settings.output_dim, settings.warmup_teacher_temperature,
                                  settings.student_temperature, settings.center_momentum)
        self.epoch = 0.0  # set by begin_step: the run's progress, for the teacher temperature

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: DINOSettings) -> DINO:
        return cls(backbone, settings)

    @classmethod
    def view_recipes(cls, settings: DINOSettings, crop_size: int, mean, std, blur: bool | None):
        return dino_views(settings, crop_size, mean, std, blur=blur)

    def teacher_temperature_at(self, epoch: float) -> float:
        s = self.settings
        return dino_teacher_temperature(epoch, s.teacher_temperature_warmup_epochs, s.warmup_teacher_temperature,
                                        s.teacher_temperature)

    def begin_step(self, epoch: float) -> None:
        self.epoch = epoch

    def adjust_gradients(self, epoch: float) -> None:
        if epoch < self.settings.freeze_last_layer_epochs:
            for parameter in self.head.last_layer_parameters():
                parameter.grad = None  # the optimizer skips it: no step, no weight decay, no momentum

    def forward(self, *views: torch.Tensor) -> MethodOutput:
        if len(views) < 2:
            raise ValueError(f"DINO needs at least the two global views, got {len(views)}")
        batch = views[0].shape[0]
        # Views of one size go through together, as in the paper's code (MultiCropWrapper): BatchNorm
        # statistics over the two global views, and over all local views.
        global_features = self.backbone(torch.cat(views[:2]))
        student_logits, bottleneck = self.head(global_features)
        student = [student_logits.view(2, batch, -1)]  # (views, N, K) blocks, as DINOLoss takes them
        if len(views) > 2:
            local_logits, _ = self.head(self.backbone(torch.cat(views[2:])))
            student.append(local_logits.view(len(views) - 2, batch, -1))
        with torch.no_grad():
            teacher_logits, _ = self.teacher_head(self.teacher_backbone(torch.cat(views[:2])))
        loss = self.criterion(student, [teacher_logits.view(2, batch, -1)], self.teacher_temperature_at(self.epoch))
        return MethodOutput(loss=loss, features=global_features[:batch].detach(),
                            embeddings=(bottleneck[:batch].detach(), bottleneck[batch:].detach()))

    def nonfinite_causes(self) -> list[str]:
        return [f"a student temperature too low ({self.settings.student_temperature})"]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return scheduled_momentum("cosine", self.settings.momentum_base, step, total_steps)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """The teacher's EMA step; call after each optimizer step."""
        ema_update_(self.teacher_backbone, self.backbone, momentum)
        ema_update_(self.teacher_head, self.head, momentum)
