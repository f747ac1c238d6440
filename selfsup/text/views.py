"""Views of a sentence: SimCSE's two dropout masks, and token-level augmentations.

The dropout views need nothing here: the same token ids go through the encoder twice in one batch (as
rows i and B + i), and each row draws its own dropout masks (Gao et al. 2021, "SimCSE", sec. 3). The
augmented views add, before that, edits of the token sequence that keep its tokens: a span crop, word
deletion and reordering within a window, the text counterparts of image crops (SimCSE's Table 1 compares
crop, word deletion and others with dropout alone).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenAugmentation:
    """Edits of a token sequence, applied in this order; each keeps only tokens of the input, and the
    defaults (1.0, 1.0, 0.0, 1) change nothing.

    Args:
        crop_min_fraction, crop_max_fraction: a contiguous span of the tokens is kept, its length a fraction
            of the sequence drawn uniformly between the two (at least one token), its start uniformly; the two
            views of a text crop independently, so they may share no token, as in Contriever's independent
            cropping (Izacard et al. 2022, "Contriever": 10% to 50%). 1.0 and 1.0: no crop.
        deletion_probability: each token is deleted with this probability; at least one token is kept.
        reorder_window: the sequence is cut into consecutive windows of this many tokens and the tokens of
            each window are shuffled (1: no reordering), so a token moves by less than the window.
    """

    crop_min_fraction: float = 1.0
    crop_max_fraction: float = 1.0
    deletion_probability: float = 0.0
    reorder_window: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.crop_min_fraction <= self.crop_max_fraction <= 1:
            raise ValueError(f"crop fractions must satisfy 0 < min <= max <= 1, got {self.crop_min_fraction} and "
                             f"{self.crop_max_fraction}")
        if not 0 <= self.deletion_probability < 1:
            raise ValueError(f"deletion_probability must be in [0, 1), got {self.deletion_probability}")
        if self.reorder_window < 1:
            raise ValueError(f"reorder_window must be >= 1, got {self.reorder_window}")

    @property
    def is_identity(self) -> bool:
        return self.crop_min_fraction == 1 and self.deletion_probability == 0 and self.reorder_window == 1

    def __call__(self, tokens: Sequence[int], generator: random.Random) -> list[int]:
        tokens = list(tokens)
        n = len(tokens)
        if n <= 1 or self.is_identity:
            return tokens
        if self.crop_min_fraction < 1:
            fraction = generator.uniform(self.crop_min_fraction, self.crop_max_fraction)
            length = min(max(1, round(fraction * n)), n)
            start = generator.randint(0, n - length)
            tokens = tokens[start:start + length]
        if self.deletion_probability > 0 and len(tokens) > 1:
            kept = [t for t in tokens if generator.random() >= self.deletion_probability]
            tokens = kept or [tokens[generator.randrange(len(tokens))]]
        if self.reorder_window > 1:
            windows = [tokens[i:i + self.reorder_window] for i in range(0, len(tokens), self.reorder_window)]
            for window in windows:
                generator.shuffle(window)
            tokens = [t for window in windows for t in window]
        return tokens


def two_views(batch: Sequence[Sequence[int]], augmentation: TokenAugmentation,
              generator: random.Random) -> list[list[int]]:
    """The 2B token sequences of a batch's two views: rows [0, B) first views, [B, 2B) their partners,
    each edited independently by ``augmentation`` (the identity for SimCSE's dropout-only views)."""
    return [augmentation(tokens, generator) for _ in range(2) for tokens in batch]
