"""Self-supervised sentence embeddings: does contrastive learning carry over to language?

Parts for ``selfsup experiment text`` (:mod:`selfsup.experiments.text`): offline labelled text from Debian
packages (:mod:`.data`), a word vocabulary (:mod:`.tokenizer`), a small Transformer encoder
(:mod:`.encoder`), the views of a sentence (:mod:`.views`: SimCSE's dropout masks, token augmentations)
and the methods (:mod:`.methods`: SimCSE with :class:`selfsup.losses.NTXentLoss`, a BYOL-style variant).
The image parts of selfsup do not import this package.
"""

from selfsup.text.data import (
    DEFAULT_FORTUNES_DIR,
    DEFAULT_TOPICS,
    DEFAULT_WORDNET_DIR,
    Hierarchy,
    LabelledTexts,
    Synset,
    read_fortune_file,
    read_fortunes,
    read_wordnet,
    split_of,
)
from selfsup.text.encoder import TextTransformerEncoder
from selfsup.text.methods import SimCSE, TextBYOL
from selfsup.text.tokenizer import WordVocabulary, split_words
from selfsup.text.views import TokenAugmentation, two_views

__all__ = [
    "DEFAULT_FORTUNES_DIR", "DEFAULT_TOPICS", "DEFAULT_WORDNET_DIR", "Hierarchy", "LabelledTexts", "SimCSE",
    "Synset", "TextBYOL", "TextTransformerEncoder", "TokenAugmentation", "WordVocabulary", "read_fortune_file",
    "read_fortunes", "read_wordnet", "split_of", "split_words", "two_views",
]
