"""MoCo v2 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"; Chen, Fan,
Girshick and He 2020, "Improved Baselines with Momentum Contrastive Learning"): a queue of negative keys.

    view1 ──query encoder f_q ─ MLP head──> q
    view2 ──key encoder f_k ─ MLP head (no gradient)──> k
    loss = InfoNCELoss(q, k, queue): k the positive, the K keys of the queue the negatives (eq. 1)
    then the global batch's keys replace the oldest in the queue; after each optimizer step f_k <- m f_k + (1 - m) f_q.

The queue is a buffer, with its pointer: it travels in the checkpoint, so resume is exact, and a step skipped for a
non-finite loss puts it back as it was (the training step restores every buffer). The keys of all processes are
gathered in rank order (the rows of the global batch) and enqueued on every rank, so the queue stays identical.

Batch statistics: MoCo's BatchNorm leak (sec. 3.3) is the query and its own key normalised with statistics of the
same few images, which lets the model find its positive through them. MoCo answers with shuffled BN; here, as in
SimCLR (sec. 2.2, "global BN") and MoCo v3, both encoders normalise with the statistics of the whole global batch:
in one process that is plain BatchNorm, with several it is the loop's SyncBatchNorm (``sync_batchnorm``, on by
default). Without it, with several processes, each rank's statistics come from its own small share of the images,
the case MoCo shuffles for, and the method warns once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist
from selfsup.data.datasets import SMALL_IMAGE_SIDE
from selfsup.losses import InfoNCELoss
from selfsup.methods.base import Method, check_sizes, low_temperature_suspect
from selfsup.methods.momentum import ema_update_, frozen_copy, scheduled_momentum
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import mlp
from selfsup.transforms.views import CIFAR10_MEAN, CIFAR10_STD, ViewConfig


@dataclass(frozen=True)
class MoCoV2Settings:
    """MoCo v2's own options."""

    # Hidden size of the MLP head (paper: 2048, ResNet-50's feature size; Chen et al. 2020, sec. 2).
    projection_hidden_dim: int = 2048
    # Output size of the head, where the loss is computed (paper: 128).
    projection_dim: int = 128
    # K, the negative keys kept (paper: 65536). Keep it well under the number of training images: a queue longer
    # than about an epoch holds earlier keys of the query's own image among its negatives. CIFAR: 4096 (the authors'
    # CIFAR-10 demo notebook).
    queue_size: int = 65536
    # InfoNCE temperature (MoCo v2: 0.2, table 1; MoCo v1: 0.07).
    temperature: float = 0.2
    # The key encoder's momentum at step 0 (paper: 0.999, sec. 3.2 and 4.1; 0.99 in the authors' CIFAR-10 demo).
    momentum_base: float = 0.999
    # How the momentum moves: constant at momentum_base (the paper), or cosine from momentum_base to 1 (BYOL's rule).
    momentum_schedule: Literal["cosine", "constant"] = "constant"

    def __post_init__(self) -> None:
        check_sizes(self, "projection_hidden_dim", "projection_dim", "queue_size")
        if not self.temperature > 0:
            raise ValueError(f"setting 'temperature' must be > 0, got {self.temperature}")
        if not 0 <= self.momentum_base <= 1:
            raise ValueError(f"setting 'momentum_base' must be in [0, 1], got {self.momentum_base}")


def moco_v2_view(image_size: int, mean=CIFAR10_MEAN, std=CIFAR10_STD, blur: bool | None = None) -> ViewConfig:
    """MoCo v2's augmentation (Chen et al. 2020, sec. 2; SimSiam's too): crop 0.2-1, flip, jitter (0.4, 0.4,
    0.4, 0.1) with p=0.8, grayscale p=0.2, blur p=0.5 (off by default at <= 64 px, as SimCLR's CIFAR-10 setup)."""
    if blur is None:
        blur = image_size > SMALL_IMAGE_SIDE
    return ViewConfig(crop_size=image_size, crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4,
                      hue=0.1, blur_probability=0.5 if blur else 0.0, mean=tuple(mean), std=tuple(std))


def batchnorm_is_global(module: nn.Module) -> bool:
    """Whether every BatchNorm of ``module`` normalises with the global batch (synchronised, or one process)."""
    return not dist.is_distributed() or all(
        isinstance(m, (nn.SyncBatchNorm, dist.CPUSyncBatchNorm))
        for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


class MoCoV2(Method):
    """MoCo v2 around any backbone that maps images to (B, ``feature_dim``) features (see the module's text)."""

    Settings = MoCoV2Settings
    # SGD: lr 0.03 x B/256, weight decay 1e-4, momentum 0.9 (He et al. 2020, sec. 4; MoCo v2 keeps them with a
    # cosine schedule). The papers use SGD only: LARS and AdamW here are SimCLR's LARS values and this project's
    # AdamW default, untuned for MoCo.
    optimizer_defaults = {"sgd": (0.03, 1e-4), "lars": (0.3, 1e-6), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "sgd"

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None, projection_hidden_dim: int = 2048,
                 projection_dim: int = 128, queue_size: int = 65536, temperature: float = 0.2,
                 momentum_base: float = 0.999, momentum_schedule: Literal["cosine", "constant"] = "constant") -> None:
        super().__init__()
        feature_dim = feature_dim if feature_dim is not None else backbone.feature_dim
        self.backbone = backbone
        # MoCo v2's head: fc -> ReLU -> fc, no BatchNorm (sec. 2).
        self.projector = mlp([feature_dim, projection_hidden_dim, projection_dim], batch_norm=False)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        # A random start, as in the paper's code: the first K / B steps draw some negatives from noise.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.criterion = InfoNCELoss(temperature, gather_distributed=False)  # the queue is the same on every rank
        self.momentum_base, self.momentum_schedule = momentum_base, momentum_schedule
        self._batchnorm_checked = False

    @classmethod
    def from_settings(cls, backbone: nn.Module, settings: MoCoV2Settings) -> MoCoV2:
        return cls(backbone, projection_hidden_dim=settings.projection_hidden_dim,
                   projection_dim=settings.projection_dim, queue_size=settings.queue_size,
                   temperature=settings.temperature, momentum_base=settings.momentum_base,
                   momentum_schedule=settings.momentum_schedule)

    @classmethod
    def view_recipes(cls, settings: MoCoV2Settings, crop_size: int, mean, std, blur: bool | None):
        view = moco_v2_view(crop_size, mean, std, blur=blur)
        return view, view

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> MethodOutput:
        if self.training and not self._batchnorm_checked:
            self._batchnorm_checked = True
            if not batchnorm_is_global(self):
                warnings.warn("MoCo v2 with several processes and BatchNorm per process: query and key statistics "
                              "come from the same few images (MoCo's BatchNorm leak, sec. 3.3); turn on "
                              "sync_batchnorm", stacklevel=2)
        features = self.backbone(view1)
        queries = self.projector(features)
        with torch.no_grad():  # keys carry no gradient
            keys = self.key_projector(self.key_backbone(view2))
        loss = self.criterion(queries, keys, queue=self.queue, queue_normalized=True)
        if self.training:  # once per step, after the loss has used the queue as it was
            self._enqueue(keys)
        return MethodOutput(loss=loss, features=features.detach(), embeddings=(queries.detach(), keys.detach()))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write the global batch's keys (all ranks, in rank order) over the oldest ones, from the pointer on."""
        keys = F.normalize(dist.gather_no_grad(keys).to(self.queue.dtype), dim=1)
        size = self.queue.shape[0]
        keys = keys[-size:]  # a batch larger than the queue leaves its last K keys
        positions = (self.queue_pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        # Out of place: the loss's backward still needs the queue it scored against.
        self.queue = self.queue.index_copy(0, positions, keys)
        self.queue_pointer.copy_((self.queue_pointer + keys.shape[0]) % size)

    def nonfinite_causes(self) -> list[str]:
        return low_temperature_suspect(self.criterion.temperature)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return scheduled_momentum(self.momentum_schedule, self.momentum_base, step, total_steps)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """The key encoder's momentum update (eq. 2); call after each optimizer step."""
        ema_update_(self.key_backbone, self.backbone, momentum)
        ema_update_(self.key_projector, self.projector, momentum)
