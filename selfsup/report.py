"""Reports a person would rather look at than read: Markdown with PNG figures beside it.

:func:`write_pretrain_report` turns a pretraining run's logged rows (``metrics.jsonl``), its evaluation
table and a sample of its embeddings into ``report.md`` plus PNG figures in the run folder. The figure
functions take several runs at once (``{run name: rows}``) so that experiments can overlay them.

matplotlib is imported only inside the figure functions and only through ``matplotlib.figure.Figure``,
which renders with Agg and leaves pyplot's global backend alone. Without matplotlib the report is still
written, with a line saying how to get the figures. Every file is written atomically (temporary file,
then ``os.replace``), so a crash never leaves half a report.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.files import atomic_write_bytes

Rows = Sequence[Mapping[str, Any]]

# Accuracies in the rows and the evaluation table are percentages (selfsup.eval.knn.knn_accuracy).
ACCURACY_KEYS = {"knn_top1": "kNN top-1", "online_probe_top1": "online linear probe top-1"}
MONITOR_PANELS = (
    ("normalized_std", "normalized std of embeddings"),
    ("rankme", "effective rank (RankMe)"),
    ("alignment", "alignment (lower: views agree)"),
    ("uniformity", "uniformity (lower: more spread)"),
)


def save_figure(figure: Any, path: Path, dpi: int = 120) -> Path:
    """Render a matplotlib ``Figure`` to PNG at ``path`` atomically; returns ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)  # the figures use constrained layout: no "tight" redraw
    return atomic_write_bytes(Path(path), buffer.getvalue())


def _new_figure(ncols: int, nrows: int = 1, panel_size: tuple[float, float] = (4.6, 3.4)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, axes


def _series(rows: Rows, key: str, x_key: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the rows that hold a finite number under ``key``; rows without it are other kinds of row."""
    points = []
    for index, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if x_key not in row:
                raise ValueError(f"metrics row {index} has {key!r} but no {x_key!r}: {dict(row)}")
            points.append((float(row[x_key]), float(value)))
    points.sort()
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def _has(runs: Mapping[str, Rows], key: str) -> bool:
    return any(_series(rows, key)[0].size for rows in runs.values())


def _running_mean(values: np.ndarray, half_window: int) -> np.ndarray:
    """Centred mean over ``2 * half_window + 1`` values (fewer at the ends), so the smoothed curve does not
    lag behind the raw one."""
    if half_window < 1 or values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(values.size)
    low, high = np.maximum(index - half_window, 0), np.minimum(index + half_window + 1, values.size)
    return (cumulative[high] - cumulative[low]) / (high - low)


def _run_legend(figure: Any, runs: Mapping[str, Rows], spare_axis: Any | None = None) -> None:
    """One legend naming the runs (colour C0, C1, ...) for the whole figure, in an unused panel when
    there is one, else below the panels; none for a single run."""
    if len(runs) < 2:
        return
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{index}", label=name) for index, name in enumerate(runs)]
    if spare_axis is not None:
        spare_axis.legend(handles=handles, loc="center", title="run", frameon=False)
    else:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 5), frameon=False)


def plot_training_curves(runs: Mapping[str, Rows], path: Path) -> Path | None:
    """Loss, learning rate and (when logged) the EMA momentum against the step. None without a loss."""
    if not _has(runs, "loss"):
        return None
    panels = [key for key in ("loss", "lr", "momentum") if _has(runs, key)]
    figure, axes = _new_figure(len(panels))
    titles = {"loss": "training loss", "lr": "learning rate", "momentum": "target EMA momentum"}
    for axis, key in zip(axes[0], panels, strict=True):
        for color_index, (name, rows) in enumerate(runs.items()):
            steps, values = _series(rows, key)
            color = f"C{color_index}"
            if key == "loss" and values.size >= 50:
                # Per-batch losses are noisy: raw in light colour, a centred mean over 1/25 of the run on top.
                axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                axis.plot(steps, _running_mean(values, values.size // 50), color=color, label=name)
            else:
                axis.plot(steps, values, color=color, label=name, marker="." if values.size < 30 else None)
        axis.set(title=titles[key], xlabel="training step", ylabel=key)
        if key == "lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        axis.grid(alpha=0.3)
    _run_legend(figure, runs)
    return save_figure(figure, path)


def plot_accuracy_per_epoch(
    runs: Mapping[str, Rows], path: Path, chance_percent: float | None = None
) -> Path | None:
    """kNN (and online-probe) top-1 accuracy in % against the epoch, with the chance level when given.
    None when no row holds an accuracy."""
    keys = [key for key in ACCURACY_KEYS if _has(runs, key)]
    if not keys:
        return None
    figure, axes = _new_figure(1, panel_size=(6.0, 3.8))
    axis = axes[0, 0]
    for color_index, (name, rows) in enumerate(runs.items()):
        for key, linestyle in zip(keys, ("-", "--"), strict=False):
            epochs, accuracy = _series(rows, key, x_key="epoch")
            if accuracy.size and (accuracy.min() < 0 or accuracy.max() > 100):
                raise ValueError(f"{key} must be a percentage in [0, 100]; run {name!r} has "
                                 f"{accuracy.min():g} to {accuracy.max():g}")
            label = ACCURACY_KEYS[key] if len(runs) == 1 else f"{name}: {ACCURACY_KEYS[key]}"
            axis.plot(epochs, accuracy, linestyle, color=f"C{color_index}", marker="o", markersize=3,
                      label=label)
    if chance_percent is not None:
        axis.axhline(chance_percent, color="grey", linestyle=":", label=f"chance ({chance_percent:.3g}%)")
    axis.set(title="accuracy during pretraining", xlabel="epoch", ylabel="top-1 accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(figure, path)


def plot_monitors(runs: Mapping[str, Rows], path: Path, embedding_dim: int | None = None) -> Path | None:
    """The embedding monitors of :mod:`selfsup.monitors` against the step, one panel each, with the
    healthy and collapsed levels marked when ``embedding_dim`` (D) is given. None without monitors."""
    panels = [(key, title) for key, title in MONITOR_PANELS if _has(runs, key)]
    has_cosines = _has(runs, "positive_cosine") or _has(runs, "negative_cosine")
    count = len(panels) + has_cosines
    if count == 0:
        return None
    ncols = min(count, 3)
    figure, axes = _new_figure(ncols, nrows=math.ceil(count / ncols))
    flat_axes = list(axes.flat)
    for axis, (key, title) in zip(flat_axes, panels, strict=False):
        for color_index, rows in enumerate(runs.values()):
            axis.plot(*_series(rows, key), color=f"C{color_index}")
        if embedding_dim is not None and key == "normalized_std":
            axis.axhline(1 / math.sqrt(embedding_dim), color="grey", linestyle="--", label="isotropic: 1/√D")
            axis.axhline(0.2 / math.sqrt(embedding_dim), color="red", linestyle=":", label="collapse warning")
        if embedding_dim is not None and key == "rankme":
            axis.axhline(embedding_dim, color="grey", linestyle="--", label=f"D = {embedding_dim}")
        axis.set(title=title, xlabel="training step", ylabel=key)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # the reference lines; runs get one legend for all panels
            axis.legend(fontsize="small")
    if has_cosines:
        from matplotlib.lines import Line2D

        axis = flat_axes[len(panels)]
        for color_index, rows in enumerate(runs.values()):
            axis.plot(*_series(rows, "positive_cosine"), "-", color=f"C{color_index}")
            axis.plot(*_series(rows, "negative_cosine"), "--", color=f"C{color_index}")
        axis.set(title="mean cosine similarity of pairs", xlabel="training step", ylabel="cosine",
                 ylim=(-1.05, 1.05))
        axis.grid(alpha=0.3)
        axis.legend(handles=[Line2D([], [], color="black", linestyle="-", label="positive pairs"),
                             Line2D([], [], color="black", linestyle="--", label="negative pairs")],
                    fontsize="small")
    for axis in flat_axes[count:]:
        axis.set_axis_off()
    _run_legend(figure, runs, spare_axis=flat_axes[count] if count < len(flat_axes) else None)
    return save_figure(figure, path)


def plot_embedding_map(embeddings: np.ndarray, labels: np.ndarray, path: Path,
                       class_names: Sequence[str] | None = None, max_points: int = 2000, seed: int = 0,
                       title: str = "t-SNE of the embeddings", tsne_iterations: int = 500) -> Path | None:
    """A 2-D t-SNE map (van der Maaten and Hinton 2008) of (N, F) embeddings coloured by their (N,)
    integer labels. At most ``max_points`` rows, drawn at random with ``seed``; rows are l2-normalized
    (so distances follow cosine similarity, as in kNN evaluation) and reduced to 50 dimensions by PCA
    first. None with fewer than 10 rows, too few for a map."""
    embeddings, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(f"embedding map: expected embeddings (N, F) and labels (N,), got shapes "
                         f"{embeddings.shape} and {labels.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embedding map: the embeddings contain NaN or infinite values")
    if embeddings.shape[0] < 10:
        return None
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(embeddings.shape[0])[:max_points])
    points, point_labels = embeddings[chosen], labels[chosen]
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    if points.shape[1] > 50:
        points = PCA(n_components=min(50, points.shape[0]), random_state=seed).fit_transform(points)
    perplexity = min(30.0, (points.shape[0] - 1) / 3)  # sklearn needs perplexity < N
    # 500 iterations (250 of them early exaggeration) instead of sklearn's 1000: the map of clustered
    # features has settled by then, at half the cost (~40 s for 2000 points on 2 busy cores).
    # scikit-learn < 1.5 calls it n_iter
    iterations = {"max_iter" if "max_iter" in TSNE().get_params() else "n_iter": tsne_iterations}
    coordinates = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                       random_state=seed, **iterations).fit_transform(points)

    classes = np.unique(point_labels)
    figure, axes = _new_figure(1, panel_size=(6.4, 5.4))
    axis = axes[0, 0]
    if len(classes) <= 20:
        from matplotlib import colormaps

        colormap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for index, label in enumerate(classes):
            mask = point_labels == label
            name = class_names[int(label)] if class_names is not None else str(label)
            axis.scatter(coordinates[mask, 0], coordinates[mask, 1], s=6, color=colormap(index), label=name)
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=2.5,
                    frameon=False, title="class")
    else:
        scatter = axis.scatter(coordinates[:, 0], coordinates[:, 1], s=6, c=point_labels, cmap="turbo")
        figure.colorbar(scatter, ax=axis, label="class index")
    axis.set(title=f"{title}\n{len(chosen)} images, {embeddings.shape[1]}-d, coloured by class",
             xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    return save_figure(figure, path)


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format_number(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _evaluation_section(eval_table: Mapping[str, Any]) -> list[str]:
    """The table of selfsup.eval.table.evaluation_table ({"rows": [{"name", ...}], settings}); any other
    dict is shown as key/value pairs."""
    rows = eval_table.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(row, Mapping) for row in rows):
        columns = [key for key in rows[0] if key != "name"]
        names = {"knn_top1": "kNN top-1 (%)", "linear_top1": "linear top-1 (%)", "feature_dim": "feature dim"}
        body = [[row.get("name", "")] + [row.get(key, "") for key in columns] for row in rows]
        table = _markdown_table(["features"] + [names.get(key, key) for key in columns], body)
        settings = {key: value for key, value in eval_table.items()
                    if key not in ("rows", "knn_top1", "linear_top1")}
    else:
        table = _markdown_table(["metric", "value"], [[key, value] for key, value in eval_table.items()])
        settings = {}
    lines = ["## Evaluation of the frozen backbone", "", table, ""]
    if isinstance(rows, list):
        from selfsup.eval.table import describe_table

        sentence = describe_table(dict(eval_table))
        if sentence:
            lines += [sentence, ""]
    if settings:
        described = ", ".join(f"{key} = {_format_number(value)}" for key, value in settings.items())
        lines += [f"Settings: {described}", ""]
    return lines


def _matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


def write_pretrain_report(run_dir: Path, metrics_rows: Rows, eval_table: Mapping[str, Any] | None = None,
                          embeddings: np.ndarray | None = None, labels: np.ndarray | None = None, *,
                          embedding_dim: int | None = None, class_names: Sequence[str] | None = None,
                          title: str | None = None, map_points: int = 2000) -> Path:
    """Write ``run_dir/report.md`` and its PNG figures beside it; returns the report's path. It ends with the run
    (command line, versions, start time, normalisation statistics) and its settings, from ``run_dir/config.json``.

    Args:
        run_dir: the run's folder; figures go to ``training_curves.png``, ``accuracy.png``,
            ``monitors.png`` and ``embedding_map.png`` in it, each only when its data is present.
        metrics_rows: the rows of ``metrics.jsonl``: step rows with "step", "epoch", "loss", "lr",
            optionally "momentum", "images_per_s" and the monitor keys; epoch rows with "step", "epoch"
            and "knn_top1" / "online_probe_top1" in %.
        eval_table: what ``selfsup.eval.table.evaluation_table`` returns, or any flat dict of numbers.
        embeddings, labels: (N, F) features of labelled images and their (N,) integer classes, for the map.
        embedding_dim: D of the monitored projections; marks 1/sqrt(D) and checks for collapse.
        class_names: names of the label indices, for the map's legend.
        map_points: at most this many embeddings go into the t-SNE map (its cost grows with them:
            ~40 s for 2000 on 2 busy CPU cores).
    """
    run_dir = Path(run_dir)
    runs = {run_dir.name: list(metrics_rows)}
    lines = [f"# {title or f'Pretraining report: {run_dir.name}'}", ""]

    step_rows = [row for row in metrics_rows if "loss" in row]
    summary = []
    if step_rows:
        last = max(step_rows, key=lambda row: row.get("step", 0))
        summary.append(f"- {last.get('step', '?')} steps, {last.get('epoch', '?')} epochs; last logged loss "
                       f"{_format_number(last['loss'])}")
        throughput = _series(metrics_rows, "images_per_s")[1]
        if throughput.size:
            summary.append(f"- median throughput {np.median(throughput):.0f} images/s")
    for key, name in ACCURACY_KEYS.items():
        accuracy = _series(metrics_rows, key, x_key="epoch")[1]
        if accuracy.size:
            summary.append(f"- {name}: {accuracy[-1]:.2f}% at the last epoch, best {accuracy.max():.2f}%")
    monitor_rows = [row for row in metrics_rows if "normalized_std" in row]
    if monitor_rows and embedding_dim is not None:
        from selfsup.monitors import collapse_warning

        warning = collapse_warning(max(monitor_rows, key=lambda row: row.get("step", 0)), embedding_dim)
        summary.append(f"- **Warning:** {warning}" if warning else
                       "- the monitors show no collapse at the last logged step")
    if summary:
        lines += summary + [""]
    if eval_table:
        lines += _evaluation_section(eval_table)

    num_classes = len(class_names) if class_names is not None else (
        len(np.unique(labels)) if labels is not None else None)
    chance_percent = 100.0 / num_classes if num_classes else None
    if _matplotlib_missing():
        lines += ["Figures skipped: matplotlib is not installed (`pip install 'selfsup[plot]'`).", ""]
    else:
        figures = [
            ("Training curves", plot_training_curves(runs, run_dir / "training_curves.png"),
             "Loss, learning rate and target momentum (BYOL) at each logged step."),
            ("Accuracy per epoch", plot_accuracy_per_epoch(runs, run_dir / "accuracy.png", chance_percent),
             "Top-1 accuracy measured during pretraining: a kNN classifier on the frozen features and, where "
             "logged, the online linear probe on the training batches."),
            ("Embedding monitors", plot_monitors(runs, run_dir / "monitors.png", embedding_dim),
             "Normalized std near 1/sqrt(D) and a high effective rank mean the embeddings spread out; both "
             "falling towards 0 and 1, with positive and negative cosines meeting at 1, mean collapse."),
        ]
        if embeddings is not None and labels is not None:
            embedding_map = plot_embedding_map(embeddings, labels, run_dir / "embedding_map.png", class_names,
                                               max_points=map_points)
            figures.append(("Embedding map", embedding_map,
                            "Nearby points have similar features; classes that form their own clusters are "
                            "separable by a kNN or linear classifier."))
        for heading, path, caption in figures:
            if path is not None:
                lines += [f"## {heading}", "", f"![{heading}]({path.name})", "", caption, ""]

    config_path = run_dir / "config.json"
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            record = config.pop("run", None) if isinstance(config, dict) else None
            if isinstance(record, dict):  # what selfsup.provenance.run_record wrote: command, versions, statistics
                from selfsup.provenance import describe_run

                lines += ["## Run", "", *describe_run(record), ""]
            lines += ["## Configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
        except (OSError, ValueError) as error:  # a broken config must not cost the report
            lines += [f"The run's configuration {config_path} could not be read: {error}", ""]
    return atomic_write_bytes(run_dir / "report.md", "\n".join(lines).encode("utf-8"))
