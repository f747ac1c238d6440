"""Evaluation of frozen sentence features: the topic probe (kNN and linear), retrieval recall@1 and the
Spearman correlation with a graded similarity; the TF-IDF baseline's features.

A feature function maps a list of texts to a (N, F) float tensor; the encoder's is :func:`encode_texts`
(evaluation mode: no dropout, pooled features before the projection head), the baseline's
:class:`TfidfFeatures`. Every score is in % (Spearman's rho x 100, as SimCSE reports it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.text.benchmark import TextBenchmark
from selfsup.text.tokenizer import WordVocabulary, split_words

FeatureFunction = Callable[[Sequence[str]], torch.Tensor]
METRICS = ("knn", "linear", "recall_at_1", "spearman")


@torch.no_grad()
def encode_texts(encoder: nn.Module, vocabulary: WordVocabulary, texts: Sequence[str], max_length: int,
                 batch_size: int = 512, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Pooled features (N, F) of ``texts``, each cut to its first ``max_length`` tokens, in evaluation mode
    (the encoder's mode is put back after). Texts are batched by length, so padding stays short."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    sequences = [vocabulary.encode(t, max_length) for t in texts]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    features = torch.empty(len(sequences), encoder.feature_dim)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = vocabulary.pad([sequences[i] for i in rows])
        features[rows] = encoder(ids.to(device), mask.to(device)).float().cpu()
        if progress is not None:
            progress(1)
    encoder.train(was_training)
    return features


class TfidfFeatures:
    """The "raw pixels" of text: TF-IDF bags of words (scikit-learn), over the words of ``vocabulary``
    (the encoder's), fitted on ``corpus``, each text cut to its first ``max_length`` tokens as the encoder
    sees it. Sublinear term frequency and l2-normalised rows; returned dense."""

    def __init__(self, vocabulary: WordVocabulary, corpus: Sequence[str], max_length: int) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.max_length = max_length
        words = [t for t in vocabulary.tokens if t not in ("[PAD]", "[UNK]", "[CLS]")]
        self.vectorizer = TfidfVectorizer(tokenizer=self._tokens, lowercase=False, token_pattern=None,
                                          vocabulary=words, sublinear_tf=True)
        self.vectorizer.fit(corpus)

    def _tokens(self, text: str) -> list[str]:
        return split_words(text)[:self.max_length]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.vectorizer.transform(texts).toarray()).float()


def recall_at_1(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """% of queries whose most cosine-similar key is their own (row i of ``keys``), among all N keys."""
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T
    return 100.0 * (similarity.argmax(dim=1) == torch.arange(len(queries))).float().mean().item()


def pair_cosines(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(first.float(), second.float(), dim=1)


def spearman(values: torch.Tensor, scores: Sequence[float]) -> float:
    """Spearman's rank correlation x 100 between ``values`` and ``scores`` (ties get average ranks)."""
    from scipy.stats import spearmanr

    return 100.0 * float(spearmanr(values.numpy(), list(scores)).statistic)


def evaluate(features: FeatureFunction, benchmark: TextBenchmark, part: str, knn_k: int = 20,
             knn_temperature: float = 0.1, seed: int = 0) -> dict[str, float]:
    """kNN and linear topic accuracy (the probe's training split as the bank / the fit), retrieval
    recall@1 and similarity Spearman, on ``part`` ("val" or "test")."""
    probe_train, probe_eval = benchmark.probe["train"], benchmark.probe[part]
    train_x, eval_x = features(probe_train.texts), features(probe_eval.texts)
    train_y, eval_y = torch.tensor(probe_train.labels), torch.tensor(probe_eval.labels)
    classes = len(probe_train.classes)
    retrieval, similarity = benchmark.retrieval[part], benchmark.similarity[part]
    # Columns that are zero on every training text (TF-IDF words absent from the probe's training split) get
    # zero weight in the L2-regularised optimum: leaving them out gives the same classifier, sooner.
    used = train_x.abs().sum(dim=0) > 0
    scores = {
        "knn": knn_accuracy(train_x, train_y, eval_x, eval_y, classes, knn_k, knn_temperature),
        "linear": linear_probe_accuracy(train_x[:, used], train_y, eval_x[:, used], eval_y, classes, seed=seed),
        "recall_at_1": recall_at_1(features(retrieval.first), features(retrieval.second)),
        "spearman": spearman(pair_cosines(features(similarity.first), features(similarity.second)),
                             similarity.scores),
    }
    return {k: round(v, 2) for k, v in scores.items()}


@dataclass
class EncoderResult:
    """One encoder's scores (val and test, in %), its training log, and what a report draws of it."""

    name: str
    label: str
    temperature: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    warning: str | None = None
    diverged: bool = False
    cosines: tuple[torch.Tensor, torch.Tensor] | None = None  # test retrieval pairs: positives, negatives
    map_features: torch.Tensor | None = None  # test fortunes, for the 2-D map

    @property
    def selection_score(self) -> float:
        """The mean of the four validation scores: how recipes (the temperature) are chosen."""
        values = [self.val.get(m, math.nan) for m in METRICS]
        return sum(values) / len(values) if all(math.isfinite(v) for v in values) else -math.inf


def retrieval_cosines(features: FeatureFunction, benchmark: TextBenchmark) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines of the test (example, own entry) pairs and of (example, another entry) pairs, five other
    entries per example (shifted by 1 to 5 in the pool)."""
    pairs = benchmark.retrieval["test"]
    queries, keys = features(pairs.first), features(pairs.second)
    negatives = torch.cat([pair_cosines(queries, keys.roll(shift, dims=0)) for shift in range(1, 6)])
    return pair_cosines(queries, keys), negatives


def score_encoder(result: EncoderResult, features: FeatureFunction, benchmark: TextBenchmark, knn_k: int = 20,
                  seed: int = 0, parts: tuple[str, ...] = ("val", "test")) -> EncoderResult:
    """``result`` with its scores on ``parts``, its test retrieval cosines and its test fortunes' features."""
    for part in parts:
        setattr(result, part, evaluate(features, benchmark, part, knn_k, seed=seed))
    result.cosines = retrieval_cosines(features, benchmark)
    result.map_features = features(benchmark.probe["test"].texts)
    return result
