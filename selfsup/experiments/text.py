"""Does contrastive learning carry over to language? SimCSE (Gao, Yao and Chen 2021) from scratch on a CPU.

One command trains a small Transformer sentence encoder with NT-Xent (:class:`selfsup.losses.NTXentLoss`,
unchanged from the image side) on two views of each text: dropout plus token edits ("augmented") at several
temperatures, SimCSE's two dropout masks alone at the temperature validation chose, and a BYOL-style variant
without negatives. Every variant starts from the same weights and sees the same batches. Each is evaluated
frozen, beside the same encoder at random initialisation and a TF-IDF bag of words: kNN and linear topic
probes on fortunes, recall@1 of dictionary entries from example sentences on held-out WordNet synsets, and
the Spearman correlation of cosine similarity with WordNet's Wu-Palmer similarity. Recipes are chosen on the
validation split; the test split is only reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from selfsup.methods.momentum import cosine_momentum
from selfsup.monitors import collapse_warning, embedding_monitors
from selfsup.schedules import scaled_learning_rate
from selfsup.text import figures
from selfsup.text.benchmark import TextBenchmark, load_benchmark
from selfsup.text.data import DEFAULT_FORTUNES_DIR, DEFAULT_TOPICS, DEFAULT_WORDNET_DIR
from selfsup.text.encoder import TextTransformerEncoder
from selfsup.text.evaluate import METRICS, EncoderResult, TfidfFeatures, encode_texts, score_encoder
from selfsup.text.methods import SimCSE, TextBYOL
from selfsup.text.tokenizer import WordVocabulary
from selfsup.text.train import MixedBatches, train_text_method
from selfsup.text.views import TokenAugmentation

Log = Callable[[str], None]
Variant = Literal["dropout", "augmented", "byol"]
VARIANTS: tuple[Variant, ...] = ("dropout", "augmented", "byol")
# The text experiment's own BYOL-style variant (predictor and moving-average target, no negatives).
PREDICTOR_TARGET: Variant = "byol"


@dataclass(frozen=True)
class TextExperimentSettings:
    """The settings of ``selfsup experiment text``; each field is a flag, its comment the flag's help."""

    # folder of Debian's fortune files, one topic per file (apt-get install fortunes)
    fortunes: str = DEFAULT_FORTUNES_DIR
    # fortune files whose fortunes are the topic classes: 17 files named after a subject
    topics: tuple[str, ...] = DEFAULT_TOPICS
    # folder of WordNet's data files (apt-get install wordnet-base)
    wordnet: str = DEFAULT_WORDNET_DIR
    # output folder: report.md, PNG figures, results.json
    out: str = "runs/text"
    # training steps of each variant
    steps: int = 1000
    # texts per batch; each gives two views, so every view has 2 x batch - 2 negatives
    batch_size: int = 64
    # tokens kept of each text (its first ones), in training and evaluation alike
    max_length: int = 32
    # words in the vocabulary: the most frequent of the training text, plus [PAD], [UNK] and [CLS]
    vocabulary_size: int = 20000
    # width of the Transformer encoder, its feature size
    dim: int = 128
    # Transformer layers
    depth: int = 1
    # attention heads per layer
    heads: int = 4
    # dropout probability in the encoder (BERT's and SimCSE's 0.1): what makes two passes of a text differ
    dropout: float = 0.1
    # pooling of the token outputs into the text's feature: mean over tokens, or the first ([CLS]) token
    pooling: Literal["mean", "first"] = "mean"
    # hidden width of the projection head and of BYOL's predictor
    projection_hidden_dim: int = 512
    # output size of the projection head
    projection_dim: int = 128
    # AdamW learning rate per 256 texts, as pretrain's: the peak rate is base_lr x batch_size / 256 (0.005 at the
    # batch of 64); linear warmup over the first tenth of the steps, then cosine decay to 0
    base_lr: float = 0.02
    # AdamW weight decay
    weight_decay: float = 0.01
    # NT-Xent temperatures of the augmented variant, one run each; the best on validation is the dropout variant's
    temperatures: tuple[float, ...] = (0.05, 0.1, 0.2)
    # variants to train: dropout (SimCSE), augmented (dropout + token edits), byol (predictor + EMA target)
    variants: tuple[Variant, ...] = VARIANTS
    # augmented views: each view is a span of at least this fraction of the text's tokens (Contriever: 0.1)
    crop_min_fraction: float = 0.1
    # augmented views: ... and at most this fraction (Contriever: 0.5; 1 and 1: no crop)
    crop_max_fraction: float = 0.5
    # augmented views: each token is deleted with this probability
    deletion_probability: float = 0.1
    # augmented views: tokens are shuffled within consecutive windows of this many (1: no reordering)
    reorder_window: int = 3
    # BYOL's target momentum at step 0, raised to 1 by BYOL's cosine schedule (BYOL: 0.996 for 300+ epochs;
    # lower for a run of a thousand steps, so that the target moves)
    byol_base_momentum: float = 0.99
    # neighbours of the kNN topic probe
    knn_k: int = 20
    # (example, entry) pairs of the retrieval test: each held-out example sentence ranks all these entries
    retrieval_pairs: int = 1000
    # pairs of noun definitions scored by Wu-Palmer similarity, for the Spearman correlation
    similarity_pairs: int = 2000
    # share of each batch drawn from the fortunes, the rest from WordNet's entries (which are 17x more)
    fortune_share: float = 0.5
    # steps between two rows of loss and collapse monitors
    log_every: int = 25
    # keep at most this many texts of each source and split (quick runs); none: all
    subset: int | None = None
    # random seed of the initial weights, batches, views and dropout masks
    seed: int = 0
    # device to train on: cpu, cuda, ...
    device: str = "cpu"
    # CPU threads for torch during the run; none: torch's choice (1 is often fastest on a busy shared machine)
    threads: int | None = None
    # show a progress bar with the whole experiment's ETA
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "dim", "depth", "heads", "projection_hidden_dim",
                     "projection_dim", "reorder_window", "knn_k", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting '{name}' must be >= 1, got {getattr(self, name)}")
        for name in ("retrieval_pairs", "similarity_pairs", "batch_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"setting '{name}' must be >= 2, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"setting 'threads' must be >= 1, got {self.threads}")
        if self.subset is not None and self.subset < 20:
            raise ValueError(f"setting 'subset' must be >= 20 texts, got {self.subset}")
        if self.vocabulary_size < 4:
            raise ValueError(f"setting 'vocabulary_size' must be >= 4, got {self.vocabulary_size}")
        if self.dim % self.heads:
            raise ValueError(f"setting 'dim' ({self.dim}) must be a multiple of 'heads' ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"setting 'dropout' must be in [0, 1), got {self.dropout}")
        if self.pooling not in ("mean", "first"):
            raise ValueError(f"setting 'pooling' must be 'mean' or 'first', got {self.pooling!r}")
        if not self.base_lr > 0 or self.weight_decay < 0:
            raise ValueError("setting 'base_lr' must be > 0 and 'weight_decay' >= 0")
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise ValueError(f"setting 'temperatures' must be one or more values > 0, got {self.temperatures}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"setting 'variants' must be distinct names among {', '.join(VARIANTS)}, "
                             f"got {', '.join(self.variants) or 'none'}")
        if not 0 < self.crop_min_fraction <= self.crop_max_fraction <= 1:
            raise ValueError("setting 'crop_min_fraction' must be in (0, crop_max_fraction], 'crop_max_fraction' "
                             f"in (0, 1], got {self.crop_min_fraction} and {self.crop_max_fraction}")
        if not 0 <= self.deletion_probability < 1:
            raise ValueError(f"setting 'deletion_probability' must be in [0, 1), got {self.deletion_probability}")
        if not 0 <= self.byol_base_momentum <= 1:
            raise ValueError(f"setting 'byol_base_momentum' must be in [0, 1], got {self.byol_base_momentum}")
        if len(self.topics) < 2:
            raise ValueError("setting 'topics' needs at least two fortune files")
        if not 0 < self.fortune_share < 1:
            raise ValueError(f"setting 'fortune_share' must be in (0, 1), got {self.fortune_share}")


def _runs(settings: TextExperimentSettings) -> list[tuple[str, Variant, float | None]]:
    """(name, variant, temperature) of each training run; 'dropout' gets its temperature when the augmented
    runs have chosen it on validation (None here)."""
    runs: list[tuple[str, Variant, float | None]] = []
    if "augmented" in settings.variants:
        runs += [(f"augmented-t{t:g}", "augmented", t) for t in settings.temperatures]
    if "dropout" in settings.variants:
        runs.append(("dropout", "dropout", None))
    if "byol" in settings.variants:
        runs.append(("byol", "byol", None))
    return runs


def run_text_experiment(settings: TextExperimentSettings, command: str = "", log: Log = print) -> dict:
    """Train every variant, evaluate it and the baselines, write OUT/report.md (PNG figures) and
    OUT/results.json, print the table, and return the results."""
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings, command, log)
    finally:
        torch.set_num_threads(threads)


def _run(settings: TextExperimentSettings, command: str, log: Log) -> dict:
    started = time.perf_counter()
    out = Path(settings.out)
    device = torch.device(settings.device)
    benchmark = load_benchmark(settings.fortunes, settings.wordnet, settings.topics, settings.retrieval_pairs,
                               settings.similarity_pairs, settings.subset)
    log("text benchmark: " + ", ".join(f"{k} {v}" for k, v in benchmark.sizes().items()))
    corpus = benchmark.corpus["fortunes"] + benchmark.corpus["wordnet"]
    vocabulary = WordVocabulary.fit(corpus, settings.vocabulary_size)
    sequences = [[vocabulary.encode(t, settings.max_length) for t in benchmark.corpus[source]]
                 for source in ("fortunes", "wordnet")]
    runs = _runs(settings)
    texts = sum(map(len, benchmark.probe.values())) + 2 * sum(
        len(pairs) for pairs in (*benchmark.retrieval.values(), *benchmark.similarity.values()))
    # The ETA's unit is a training step; an evaluation (val and test) counts as one step per batch of the texts
    # it reads (about what it cost in measured runs), the TF-IDF baseline (a linear probe over the whole
    # vocabulary) as four evaluations.
    evaluation_units = max(1, math.ceil(texts / settings.batch_size))
    bar = tqdm(total=len(runs) * (settings.steps + evaluation_units) + 5 * evaluation_units, unit="step",
               desc="text experiment", disable=not settings.progress, dynamic_ncols=True)

    tfidf = TfidfFeatures(vocabulary, corpus, settings.max_length)
    results = [score_encoder(EncoderResult("tfidf", "TF-IDF bag of words"), tfidf, benchmark, settings.knn_k,
                             settings.seed, ("test",))]
    bar.update(4 * evaluation_units)

    def new_encoder() -> TextTransformerEncoder:
        torch.manual_seed(settings.seed)  # every variant, and the random-init row, start from these weights
        return TextTransformerEncoder(len(vocabulary), settings.dim, settings.depth, settings.heads,
                                      max_length=settings.max_length + 1, dropout=settings.dropout,
                                      pooling=settings.pooling).to(device)

    def features_of(encoder: torch.nn.Module) -> Callable:
        return lambda texts: encode_texts(encoder, vocabulary, texts, settings.max_length)

    results.append(score_encoder(EncoderResult("random", "random init"), features_of(new_encoder()), benchmark,
                                 settings.knn_k, settings.seed))
    bar.update(evaluation_units)
    augmentation = TokenAugmentation(settings.crop_min_fraction, settings.crop_max_fraction,
                                     settings.deletion_probability, settings.reorder_window)
    for name, variant, temperature in runs:
        if variant == "dropout":
            swept = [r for r in results if r.name.startswith("augmented-")]
            temperature = max(swept, key=lambda r: r.selection_score).temperature if swept else settings.temperatures[0]
            name = f"dropout-t{temperature:g}"
        encoder = new_encoder()
        if variant == PREDICTOR_TARGET:
            method = TextBYOL(encoder, settings.projection_hidden_dim, settings.projection_dim,
                              settings.projection_hidden_dim)
            label = "BYOL-style (augmented views, no negatives)"
        else:
            method = SimCSE(encoder, settings.projection_hidden_dim, settings.projection_dim, temperature)
            views = "dropout only" if variant == "dropout" else "dropout + token edits"
            label = f"SimCSE, {views}, t = {temperature:g}"
        method = method.to(device)
        batches = MixedBatches(sequences, settings.batch_size, settings.fortune_share, settings.seed)
        trained = train_text_method(
            method, vocabulary, batches, TokenAugmentation() if variant == "dropout" else augmentation,
            settings.steps, scaled_learning_rate(settings.base_lr, settings.batch_size), settings.weight_decay,
            settings.seed,
            momentum_at=(lambda s, n: cosine_momentum(s, n, settings.byol_base_momentum)) if variant == PREDICTOR_TARGET
            else None, log_every=settings.log_every, device=device, on_step=lambda: bar.update(1), log=log,
            name=name)
        result = EncoderResult(name, label, temperature, rows=trained.rows, seconds=trained.seconds,
                               diverged=trained.diverged)
        if trained.embeddings is not None and not trained.diverged:
            result.warning = collapse_warning(embedding_monitors(*trained.embeddings), settings.projection_dim)
        if trained.diverged:  # nothing to score: its features may be NaN
            result.val = result.test = dict.fromkeys(METRICS, math.nan)
            results.append(result)
        else:
            results.append(score_encoder(result, features_of(encoder), benchmark, settings.knn_k, settings.seed))
        bar.update(evaluation_units)
        log(f"[{name}] {trained.seconds:.0f} s  val " + "  ".join(f"{k} {v:.2f}" for k, v in result.val.items())
            + (f"  WARNING {result.warning}" if result.warning else ""))
    bar.close()
    return _report(out, settings, benchmark, results, command, time.perf_counter() - started, log)


HEADER = ["encoder", "kNN", "linear", "recall@1", "Spearman", "val mean", "train s"]


def _table_rows(results: list[EncoderResult]) -> list[list]:
    rows = []
    for r in results:
        val = "" if r.name == "tfidf" else f"{r.selection_score:.2f}"
        rows.append([r.label + (" (collapsing)" if r.warning else ""), *(f"{r.test[m]:.2f}" for m in METRICS), val,
                     f"{r.seconds:.0f}" if r.seconds else ""])
    return rows


def _figures(out: Path, results: list[EncoderResult], benchmark: TextBenchmark, seed: int) -> list[tuple]:
    """(heading, PNG path, caption) of each figure, drawn by :mod:`selfsup.text.figures`."""
    from selfsup.experiments.common import new_figure

    def save(name: str, figure) -> Path:
        figure.savefig(out / name, dpi=120)
        return out / name

    figure, axes = new_figure(4, panel_size=(3.6, 3.0))
    figures.draw_scores(list(axes[0]), results)
    scores = save("accuracy.png", figure)
    scored = [r for r in results if r.cosines is not None]
    columns = min(4, len(scored))
    figure, axes = new_figure(columns, math.ceil(len(scored) / columns), panel_size=(3.4, 2.6))
    for axis in axes.flat[len(scored):]:
        axis.set_visible(False)
    figures.draw_similarities(list(axes.flat), scored)
    similarities = save("similarities.png", figure)
    trained = [r for r in results if r.rows and not r.diverged]
    shown = [r for r in results if r.name in ("tfidf", "random")]
    shown += [max(trained, key=lambda r: r.selection_score)] if trained else []
    figure, axes = new_figure(len(shown), panel_size=(4.2, 3.8))
    figures.draw_map(list(axes[0]), shown, benchmark.probe["test"].labels, benchmark.probe["test"].classes, seed)
    topic_map = save("map.png", figure)
    monitors = None
    if trained:
        figure, axes = new_figure(4, panel_size=(3.6, 3.0))
        figures.draw_monitors(list(axes[0]), trained)
        monitors = save("monitors.png", figure)
    return [("Scores against temperature and variant", scores,
             "Dropout + token edits at each temperature (line), dropout only at the temperature chosen on validation "
             "(star), and horizontal lines for BYOL-style, random init and TF-IDF."),
            ("Cosine similarities of test retrieval pairs", similarities,
             "An example sentence with its own entry, and with five other entries of the pool."),
            ("Map of test fortunes coloured by topic (t-SNE)", topic_map,
             "TF-IDF, random init and the variant chosen on validation."),
            ("Loss and collapse monitors during training", monitors, "")]


def _answer(results: list[EncoderResult]) -> list[str]:
    """The question answered in words, from the measured test scores."""
    by_name = {r.name: r for r in results}
    trained = [r for r in results if r.name not in ("tfidf", "random") and not r.diverged]
    if not trained:
        return []
    best = max(trained, key=lambda r: r.selection_score)
    names = {"knn": "topic kNN", "linear": "topic linear probe", "recall_at_1": "retrieval recall@1",
             "spearman": "Wu-Palmer Spearman"}

    def compare(other: EncoderResult) -> str:
        return "; ".join(f"{names[m]} {best.test[m]:.2f} vs {other.test[m]:.2f}" for m in METRICS)

    lines = [f"The variant chosen on validation is **{best.label}**. On the test split, against the same encoder "
             f"at random initialisation: {compare(by_name['random'])}. Against TF-IDF: {compare(by_name['tfidf'])}."]
    dropout = [r for r in trained if r.name.startswith("dropout-")]
    augmented = [r for r in trained if r.name.startswith("augmented")]
    if dropout and augmented:
        d = dropout[0]
        a = next(r for r in augmented if r.temperature == d.temperature)
        lines.append(f"Dropout-only views (SimCSE's) against dropout + token edits at the same temperature "
                     f"({d.temperature:g}, chosen on validation): "
                     + "; ".join(f"{names[m]} {d.test[m]:.2f} vs {a.test[m]:.2f}" for m in METRICS) + ".")
    for r in trained:
        if r.warning:
            lines.append(f"{r.label}: {r.warning}")
    return lines


def _report(out: Path, settings: TextExperimentSettings, benchmark: TextBenchmark, results: list[EncoderResult],
            command: str, seconds: float, log: Log) -> dict:
    from selfsup.experiments.common import markdown_table, write_experiment_outputs

    out.mkdir(parents=True, exist_ok=True)
    rows = _table_rows(results)
    pool = len(benchmark.retrieval["test"])
    lines = ["# Contrastive learning for text: SimCSE from scratch", "",
             f"Command: `{command or 'run_text_experiment(...)'}`; {seconds / 60:.1f} min in all.", "",
             "Test split; all scores in %. Topic probe: fortunes, "
             f"{len(benchmark.probe['train'].classes)} topics (kNN k = {settings.knn_k}, linear: L-BFGS logistic "
             "regression). Retrieval: each held-out WordNet example sentence ranks "
             f"{pool} dictionary entries, words and definition (chance {100 / max(pool, 1):.2f}). "
             "Spearman: cosine of two held-out noun definitions against the Wu-Palmer similarity of their synsets. "
             "'val mean' is the mean of the four validation scores, which chose the temperature (among the augmented "
             "runs) that the dropout-only run uses.", "", markdown_table(HEADER, rows), "",
             *[line + "\n" for line in _answer(results)],
             "Data sizes: " + ", ".join(f"{k} {v}" for k, v in benchmark.sizes().items()) + ".", ""]
    figure_list = _figures(out, results, benchmark, settings.seed)
    summary = {
        "settings": asdict(settings), "command": command, "seconds": round(seconds, 1), "sizes": benchmark.sizes(),
        "classes": list(benchmark.probe["train"].classes),
        "variants": {r.name: {"label": r.label, "temperature": r.temperature, "val": r.val, "test": r.test,
                              "selection_score": r.selection_score if r.val else None, "seconds": r.seconds,
                              "collapse_warning": r.warning, "diverged": r.diverged} for r in results},
    }
    return write_experiment_outputs(out, lines, figure_list, summary, {r.name: r.rows for r in results if r.rows},
                                    HEADER, rows, log)
