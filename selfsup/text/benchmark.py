"""The text benchmark: a training corpus and held-out evaluation sets, all from the Debian packages.

- ``corpus``: the unlabelled training text, fortunes of the training split and WordNet dictionary entries
  (``words: definition; "example"``) of training-split synsets;
- topic probe: fortunes labelled by their file, train / val / test by :func:`selfsup.text.data.split_of`;
- retrieval: pairs (example sentence, its entry without examples: ``words: definition``) of one held-out
  synset; the query is the example, the candidates every entry of the pool. The example nearly always uses
  one of the words (94% of the test pairs), so this rewards keeping a sentence's words as well as their sense;
- graded similarity: pairs of held-out noun definitions with the Wu-Palmer similarity of their synsets,
  for a Spearman correlation (the counterpart of STS here; WordNet's taxonomy, not human ratings).

The val sets come from the validation split (recipes are chosen there), the test sets from the test split.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from selfsup.text.data import Hierarchy, LabelledTexts, Synset, read_fortunes, read_wordnet, split_of


@dataclass(frozen=True)
class PairSet:
    """Two aligned lists of texts and, for graded pairs, one score per pair."""

    first: tuple[str, ...]
    second: tuple[str, ...]
    scores: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.first)


@dataclass(frozen=True)
class TextBenchmark:
    corpus: dict[str, tuple[str, ...]]  # "fortunes", "wordnet": the training text of each source
    probe: dict[str, LabelledTexts]  # "train", "val", "test"
    retrieval: dict[str, PairSet]  # "val", "test": (example, words: definition)
    similarity: dict[str, PairSet]  # "val", "test": (definition, definition, Wu-Palmer)

    def sizes(self) -> dict[str, int]:
        sizes = {f"corpus_{k}": len(v) for k, v in self.corpus.items()}
        sizes.update({f"probe_{k}": len(v) for k, v in self.probe.items()})
        sizes.update({f"retrieval_{k}": len(v) for k, v in self.retrieval.items()})
        sizes.update({f"similarity_{k}": len(v) for k, v in self.similarity.items()})
        return sizes


def _hash_order(items: Sequence, key) -> list:
    """``items`` in the order of the CRC-32 of their key: a fixed, order-free way to take the first N."""
    return sorted(items, key=lambda item: (zlib.crc32(key(item).encode("utf-8")), key(item)))


def retrieval_pairs(synsets: Sequence[Synset], count: int) -> PairSet:
    """(first example, ``words: definition``) of up to ``count`` synsets with an example, distinct definitions."""
    chosen, seen = [], set()
    for synset in _hash_order([s for s in synsets if s.examples], key=lambda s: s.key):
        if synset.definition not in seen:
            seen.add(synset.definition)
            chosen.append(synset)
        if len(chosen) == count:
            break
    return PairSet(tuple(s.examples[0] for s in chosen), tuple(s.headword_definition for s in chosen))


def similarity_pairs(nouns: Sequence[Synset], hierarchy: Hierarchy, count: int, seed: int = 0) -> PairSet:
    """``count`` pairs of definitions of distinct noun synsets, scored by Wu-Palmer similarity.

    Random pairs are nearly all unrelated, so two thirds of the pairs are relatives: the first synset is
    drawn at random, then an ancestor 1 to 3 edges up, then another synset of ``nouns`` under it; the other
    third are random pairs. The draw is fixed by ``seed`` (the experiments keep 0, a fixed rule).
    """
    nouns = [s for s in nouns if s.key.startswith("n")]
    if len(nouns) < 2:
        return PairSet((), (), ())
    under: dict[str, list[Synset]] = defaultdict(list)
    for synset in nouns:
        for ancestor, distance in hierarchy.ancestors(synset.key).items():
            if 1 <= distance <= 3:
                under[ancestor].append(synset)
    generator = random.Random(seed)
    first, second, scores = [], [], []
    while len(first) < count:
        a = generator.choice(nouns)
        b = generator.choice(nouns)
        if len(first) % 3 != 2:
            ancestors = [c for c, d in hierarchy.ancestors(a.key).items() if 1 <= d <= 3 and len(under[c]) > 1]
            if ancestors:
                b = generator.choice(under[generator.choice(ancestors)])
        if a.key == b.key or a.definition == b.definition:
            continue
        first.append(a.definition)
        second.append(b.definition)
        scores.append(hierarchy.wu_palmer(a.key, b.key))
    return PairSet(tuple(first), tuple(second), tuple(scores))


def load_benchmark(fortunes_dir: str, wordnet_dir: str, topics: Sequence[str] | None, retrieval_count: int,
                   similarity_count: int, subset: int | None = None) -> TextBenchmark:
    """The benchmark; ``subset`` keeps at most that many items of each source in each split (the first in
    hash order), for quick runs."""
    fortunes = read_fortunes(fortunes_dir, topics)
    synsets = read_wordnet(wordnet_dir)
    hierarchy = Hierarchy(synsets)

    def first(items: list) -> list:
        return items if subset is None else items[:subset]

    probe = {part: fortunes.split(part) for part in ("train", "val", "test")}
    if subset is not None:  # the first in hash order, a mix of topics (the files come one topic after another)
        probe = {part: texts.select(sorted(_hash_order(range(len(texts)), key=lambda i: texts.texts[i])[:subset]))
                 for part, texts in probe.items()}
    by_split: dict[str, list[Synset]] = defaultdict(list)
    for synset in _hash_order(synsets, key=lambda s: s.key):
        by_split[split_of(synset.key)].append(synset)
    corpus = {"fortunes": probe["train"].texts, "wordnet": tuple(s.entry for s in first(by_split["train"]))}
    retrieval = {part: retrieval_pairs(by_split[part], retrieval_count if subset is None else min(retrieval_count,
                                                                                                   subset))
                 for part in ("val", "test")}
    similarity = {part: similarity_pairs(first(by_split[part]), hierarchy,
                                         similarity_count if subset is None else min(similarity_count, subset))
                  for part in ("val", "test")}
    return TextBenchmark(corpus=corpus, probe=probe, retrieval=retrieval, similarity=similarity)
