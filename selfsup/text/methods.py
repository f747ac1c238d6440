"""Sentence-embedding methods: SimCSE's NT-Xent on two views of each sentence, and a BYOL-style variant
(predictor + moving-average target, no negatives), both around :class:`TextTransformerEncoder`.

Both take the two views stacked in one batch, ``ids`` and ``mask`` of shape (2B, L): rows [0, B) the first
views, rows [B, 2B) their partners. One pass over the 2B rows gives every row its own dropout masks (the
positive pairs of unsupervised SimCSE) and lets the BatchNorm of the heads see all 2B views (as SimCLR).
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.losses import BYOLLoss, NTXentLoss
from selfsup.methods.momentum import ema_update_, frozen_copy
from selfsup.methods.output import MethodOutput
from selfsup.models.heads import mlp


def _halves(ids: torch.Tensor) -> int:
    if ids.ndim != 2 or ids.shape[0] < 2 or ids.shape[0] % 2:
        raise ValueError(f"expected the two views stacked as (2B, L) with B >= 1, got shape {tuple(ids.shape)}")
    return ids.shape[0] // 2


class SimCSE(nn.Module):
    """Unsupervised SimCSE (Gao, Yao and Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence
    Embeddings", sec. 3): NT-Xent over the projections of two views of each sentence, the other 2B - 2 views
    of the batch its negatives.

        ids, mask (2B, L) --encoder--> h (2B, F) --projector--> z (2B, D); loss = NTXentLoss(z[:B], z[B:])

    The loss is :class:`selfsup.losses.NTXentLoss`, the one SimCLR uses for images. SimCSE's temperature is
    0.05; its head is BERT's one-layer tanh pooler, here SimCLR's two-layer head (Linear, BatchNorm, ReLU,
    Linear) as on the image side. As in both papers the features before the head are what is evaluated.
    """

    def __init__(self, encoder: nn.Module, projection_hidden_dim: int = 512, projection_dim: int = 128,
                 temperature: float = 0.05) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp([encoder.feature_dim, projection_hidden_dim, projection_dim])
        self.criterion = NTXentLoss(temperature, gather_distributed=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        batch = _halves(ids)
        features = self.encoder(ids, mask)
        z = self.projector(features)
        loss = self.criterion(z[:batch], z[batch:])
        return MethodOutput(loss=loss, features=features[:batch].detach(),
                            embeddings=(z[:batch].detach(), z[batch:].detach()))

    def update_target(self, momentum: float) -> None:
        """SimCSE has no target network; present so a training loop treats the methods alike."""


class TextBYOL(nn.Module):
    """BYOL (Grill et al. 2020) on sentences: the online encoder + projector + predictor regresses the
    projection of the other view by a target network, a moving average of the online encoder + projector
    with no gradient; no negatives.

        online:  ids --encoder--> projector --> predictor --> p1, p2
        target:  ids --target encoder--> target projector --> t1, t2   (torch.no_grad: no gradient flows)
        loss = (BYOLLoss(p1, t2) + BYOLLoss(p2, t1)) / 2;  after each step: target <- m target + (1 - m) online

    The target runs in training mode on the same batch (dropout and BatchNorm as the online network), as
    the image BYOL runs its target; its dropout masks differ from the online ones. Heads: BYOL's shape
    (Linear, BatchNorm, ReLU, Linear) at CPU sizes.
    """

    def __init__(self, encoder: nn.Module, projection_hidden_dim: int = 512, projection_dim: int = 128,
                 prediction_hidden_dim: int = 512) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp([encoder.feature_dim, projection_hidden_dim, projection_dim])
        self.predictor = mlp([projection_dim, prediction_hidden_dim, projection_dim])
        self.target_encoder = frozen_copy(encoder)
        self.target_projector = frozen_copy(self.projector)
        self.criterion = BYOLLoss()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        batch = _halves(ids)
        features = self.encoder(ids, mask)
        z = self.projector(features)
        p = self.predictor(z)
        with torch.no_grad():
            t = self.target_projector(self.target_encoder(ids, mask))
        loss = (self.criterion(p[:batch], t[batch:]) + self.criterion(p[batch:], t[:batch])) / 2
        return MethodOutput(loss=loss, features=features[:batch].detach(),
                            embeddings=(z[:batch].detach(), z[batch:].detach()))

    def update_target(self, momentum: float) -> None:
        """The EMA step of the target encoder and projector (BatchNorm buffers follow, see ema_update_)."""
        ema_update_(self.target_encoder, self.encoder, momentum)
        ema_update_(self.target_projector, self.projector, momentum)
