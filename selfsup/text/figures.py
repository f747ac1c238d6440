"""Drawing the text experiment's figures into matplotlib axes that the caller lays out and saves (so this
module imports no plotting library itself): scores against temperature and variant, the cosine
distributions of retrieval pairs, a 2-D map of sentence features by topic, and the training monitors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selfsup.text.evaluate import METRICS, EncoderResult

METRIC_TITLES = {"knn": "topic kNN (%)", "linear": "topic linear probe (%)", "recall_at_1": "retrieval recall@1 (%)",
                 "spearman": "Wu-Palmer Spearman x 100"}
MONITORS = (("loss", "training loss"), ("normalized_std", "normalized std (0 = collapse)"),
            ("rankme", "effective rank (RankMe)"), ("negative_cosine", "mean negative cosine"))
BASELINE_STYLES = {"tfidf": ("black", "--"), "random": ("grey", ":"), "byol": ("tab:red", "-.")}


def draw_scores(axes: Sequence, results: Sequence[EncoderResult]) -> None:
    """One panel per metric (4 axes): the augmented runs against their temperature (line), the dropout-only
    run at its temperature (star), and horizontal lines for the BYOL-style run and the baselines."""
    swept = sorted((r for r in results if r.name.startswith("augmented-")), key=lambda r: r.temperature)
    for axis, metric in zip(axes, METRICS):
        if swept:
            axis.plot([r.temperature for r in swept], [r.test[metric] for r in swept], "o-",
                      label="dropout + token edits")
        for r in results:
            if r.name.startswith("dropout-"):
                axis.plot([r.temperature], [r.test[metric]], "*", markersize=12, label="dropout only (SimCSE)")
            elif r.name in BASELINE_STYLES and r.test:
                color, style = BASELINE_STYLES[r.name]
                axis.axhline(r.test[metric], color=color, linestyle=style, label=r.label)
        axis.set_xscale("log")
        axis.set_xlabel("NT-Xent temperature")
        axis.set_title(METRIC_TITLES[metric], fontsize=9)
    axes[0].legend(fontsize=6)


def draw_similarities(axes: Sequence, results: Sequence[EncoderResult]) -> None:
    """Per encoder (one axis each): histograms of the cosine between a test example sentence and its own
    entry, and between it and other entries of the pool."""
    for axis, r in zip(axes, results):
        positives, negatives = (c.numpy() for c in r.cosines)
        bins = np.linspace(min(positives.min(), negatives.min()), 1.0, 41)
        axis.hist(negatives, bins=bins, density=True, alpha=0.6, label="other entries")
        axis.hist(positives, bins=bins, density=True, alpha=0.6, label="own entry")
        axis.set_title(r.label, fontsize=7)
        axis.set_xlabel("cosine (example, entry)", fontsize=7)
    axes[0].legend(fontsize=6)


def draw_map(axes: Sequence, results: Sequence[EncoderResult], labels: Sequence[int], classes: Sequence[str],
             seed: int = 0) -> None:
    """Per encoder: t-SNE (after PCA to 50 dimensions) of its features of the test fortunes, coloured by topic
    (the legend on the last axis)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    for axis, r in zip(axes, results):
        x = r.map_features.numpy()
        x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
        points = TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
        scatter = axis.scatter(points[:, 0], points[:, 1], c=list(labels), cmap="tab20", s=3, vmin=0, vmax=19)
        axis.set_title(r.label, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    handles = scatter.legend_elements(num=list(range(len(classes))))[0]
    axes[-1].legend(handles, list(classes), fontsize=5, loc="center left", bbox_to_anchor=(1.0, 0.5))


def draw_monitors(axes: Sequence, results: Sequence[EncoderResult]) -> None:
    """One panel per monitor (4 axes), one line per trained encoder, against the training step."""
    for axis, (key, title) in zip(axes, MONITORS):
        for r in results:
            axis.plot([row["step"] for row in r.rows], [row[key] for row in r.rows], label=r.name)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=6)
