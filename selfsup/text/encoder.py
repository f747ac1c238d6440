"""A small Transformer sentence encoder trained from scratch: token ids -> one pooled feature vector."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class TextTransformerEncoder(nn.Module):
    """Token and position embeddings, ``torch.nn.TransformerEncoder``, then mean or first-token pooling.

    Input: ids (B, L) int64 and mask (B, L) bool, True on real tokens, with the ``[CLS]`` token first (as
    :meth:`selfsup.text.tokenizer.WordVocabulary.pad` builds them). Output: features (B, ``feature_dim``).

    BERT's layout (Devlin et al. 2019) at a CPU size (the embeddings summed, then LayerNorm and dropout, so that
    the residual stream starts at unit scale), with two departures: pre-LayerNorm layers
    (``norm_first``, Xiong et al. 2020), which train from scratch without BERT's long warmup; and no
    dropout inside the feed-forward block, as in BERT (PyTorch's layer has one there; on a CPU its mask,
    four times the width, costs more than the rest of the dropout). Dropout stays where BERT has it: on
    the embeddings, on the attention weights and on each block's output, p = 0.1 by default, which is what
    makes two passes of one sentence differ (SimCSE's positives).

    ``pooling="mean"``: the average over real tokens ([CLS] included); ``"first"``: the [CLS] output.
    Embeddings start from N(0, 0.02) as BERT's.
    """

    def __init__(self, vocabulary_size: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 feedforward_dim: int | None = None, max_length: int = 64, dropout: float = 0.1,
                 pooling: Literal["mean", "first"] = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "first"):
            raise ValueError(f"pooling must be 'mean' or 'first', got {pooling!r}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.feature_dim = dim
        self.max_length = max_length
        self.pooling = pooling
        self.token_embedding = nn.Embedding(vocabulary_size, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_length, dim)
        self.embedding_norm = nn.LayerNorm(dim)
        self.embedding_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, feedforward_dim or 4 * dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        layer.dropout = nn.Identity()  # the feed-forward block's inner dropout, which BERT does not have
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        for embedding in (self.token_embedding, self.position_embedding):
            nn.init.normal_(embedding.weight, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"expected ids and mask of one shape (B, L), got {tuple(ids.shape)} and "
                             f"{tuple(mask.shape)}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} tokens exceed max_length {self.max_length}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding_dropout(self.embedding_norm(self.token_embedding(ids) + self.position_embedding(positions)))
        x = self.transformer(x, src_key_padding_mask=~mask)
        if self.pooling == "first":
            return x[:, 0]
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
