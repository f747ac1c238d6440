"""A word vocabulary fitted on the training text: lower-cased words and punctuation marks as tokens.

Why words and not a subword library (Hugging Face ``tokenizers``): the token-level augmentations of
:mod:`selfsup.text.views` delete and reorder *words*, which is direct when a token is a word; the TF-IDF
baseline counts the same words, so the bag-of-words baseline and the encoder see the same units; and it
needs no new dependency. What it gives up: a word unseen in training is ``[UNK]``, where subwords would
still share pieces (``barked`` -> ``bark ##ed``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

# A word: letters or digits with inner apostrophes ("don't", "o'clock"); every other non-space character
# (punctuation, symbols) is a token of its own.
TOKEN_PATTERN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")
PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # ids 0, 1, 2


def split_words(text: str) -> list[str]:
    """The tokens of ``text``: lower-cased words and single punctuation marks, in order."""
    return TOKEN_PATTERN.findall(text.lower())


class WordVocabulary:
    """Token strings <-> ids: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, then the words.

    Build it with :meth:`fit` on the training text only.
    """

    pad_id, unk_id, cls_id = 0, 1, 2

    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[:3]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary starts with {SPECIAL_TOKENS}, got {tuple(tokens[:3])}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("the vocabulary has repeated tokens")
        self.tokens = tuple(tokens)
        self.ids = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def fit(cls, texts: Iterable[str], max_size: int = 20000, min_count: int = 2) -> WordVocabulary:
        """The ``max_size - 3`` most frequent tokens of ``texts`` seen at least ``min_count`` times (ties
        broken alphabetically, so the vocabulary is a function of the text alone)."""
        if max_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"max_size must be > {len(SPECIAL_TOKENS)}, got {max_size}")
        counts = Counter(token for text in texts for token in split_words(text))
        ranked = sorted((c, t) for t, c in counts.items() if c >= min_count and t not in SPECIAL_TOKENS)
        ranked.sort(key=lambda item: (-item[0], item[1]))
        return cls(SPECIAL_TOKENS + tuple(t for _, t in ranked[:max_size - len(SPECIAL_TOKENS)]))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Ids of the first ``max_length`` tokens of ``text`` (all when None), unknown words as ``[UNK]``."""
        words = split_words(text)
        if max_length is not None:
            words = words[:max_length]
        return [self.ids.get(w, self.unk_id) for w in words]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens[i] for i in ids)

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: ``[CLS]`` prepended to each sequence, padded with ``[PAD]`` to the longest.

        Returns ids (B, L + 1) int64 and mask (B, L + 1) bool, True on real tokens ([CLS] included).
        """
        length = 1 + max((len(s) for s in sequences), default=0)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, 0] = self.cls_id
            ids[row, 1:1 + len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        return ids, ids != self.pad_id
