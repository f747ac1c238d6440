"""What SimCLR's temperature does: one SimCLR run per temperature at the same budget, then kNN accuracy
against the temperature, the distributions of positive and negative cosines, and how strongly the loss
weights the hardest negatives.

Why the last one: the gradient of NT-Xent with respect to an anchor pushes it away from each negative in
proportion to that negative's softmax weight (Wang and Liu 2021, "Understanding the Behaviour of
Contrastive Loss", sec. 3.1), so the temperature sets how much of the push goes to the few most similar
negatives (low t: nearly all of it) rather than being spread over all of them (high t: uniformly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.config import PretrainConfig
from selfsup.experiments.common import (
    ExperimentData,
    ExperimentSettings,
    Log,
    VariantRun,
    experiment_pretrain_config,
    initial_knn_top1,
    load_experiment_data,
    markdown_table,
    new_figure,
    train_variant,
    variant_config,
    write_experiment_outputs,
)
from selfsup.monitors import embedding_monitors, pair_cosines
from selfsup.settings import to_dict

DEFAULT_TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0)


def negative_weights(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""The weight each negative gets in NT-Xent's gradient, normalized over the negatives of each anchor.

    For anchor :math:`i` among the 2N l2-normalized views :math:`u`, with positive :math:`j(i)`,
    :math:`\partial \ell_i / \partial u_i = \frac{1}{t}\big(\sum_{k \ne i} p_{ik} u_k - u_{j(i)}\big)`,
    :math:`p_{ik} = e^{u_i \cdot u_k / t} / \sum_{l \ne i} e^{u_i \cdot u_l / t}`. This returns, for each
    anchor, :math:`w_{ik} = p_{ik} / \sum_{k' \in \mathcal{N}(i)} p_{ik'}` over its 2N - 2 negatives
    :math:`\mathcal{N}(i)` (the other views but its positive), sorted from the largest weight down.

    Shapes: (N, D), (N, D) with N >= 2 -> (2N, 2N - 2), float64, rows summing to 1.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"negative_weights expects two (N, D) tensors with N >= 2, got shapes "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"negative_weights: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    views = F.normalize(torch.cat([z1, z2]).detach().to(torch.float64), dim=1)
    logits = views @ views.T / temperature
    rows = torch.arange(2 * n)
    is_negative = torch.ones(2 * n, 2 * n, dtype=torch.bool)
    is_negative[rows, rows] = False
    is_negative[rows, (rows + n) % (2 * n)] = False
    negative_logits = logits[is_negative].view(2 * n, 2 * n - 2)
    return negative_logits.softmax(dim=1).sort(dim=1, descending=True).values


def hardest_negative_shares(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> dict[str, float]:
    """How concentrated the gradient is on the hardest negatives, averaged over the 2N anchors:

    - ``top1pct_share``: the share of the negatives' weight (:func:`negative_weights`) that goes to the top
      1% of them (at least one), 0.01 if the weights were uniform, 1 if one negative took it all;
    - ``top10_share``: the same for the 10 hardest negatives;
    - ``effective_negatives``: :math:`\\exp` of the entropy of the weights, the number of equally weighted
      negatives that would spread the push as evenly (2N - 2 when uniform, 1 when one negative dominates).
    """
    weights = negative_weights(z1, z2, temperature)
    count = weights.shape[1]
    top_one_percent = max(1, round(0.01 * count))
    entropy = -(weights * weights.clamp_min(1e-300).log()).sum(dim=1)
    return {"top1pct_share": weights[:, :top_one_percent].sum(dim=1).mean().item(),
            "top10_share": weights[:, :min(10, count)].sum(dim=1).mean().item(),
            "effective_negatives": entropy.exp().mean().item(),
            "negatives_per_anchor": count}


def _summary(run: VariantRun, temperature: float) -> dict:
    knn = [row["knn_top1"] for row in run.rows if "knn_top1" in row]
    summary = {"temperature": temperature, "final_knn_top1": run.final_knn_top1,
               "best_knn_top1": max(knn) if knn else math.nan, "diverged": run.diverged, "seconds": run.seconds}
    if run.embeddings is not None:
        positives, negatives = pair_cosines(*run.embeddings)
        summary |= {"positive_cosine_mean": positives.mean().item(), "negative_cosine_mean": negatives.mean().item(),
                    "negative_cosine_std": negatives.std().item(),
                    **hardest_negative_shares(*run.embeddings, temperature),
                    "monitors": embedding_monitors(*run.embeddings)}
    return summary


def _figures(runs: dict[float, VariantRun], summaries: list[dict], out: Path, data: ExperimentData,
             embedding_dim: int, initial_knn: float) -> list[tuple[str, Path | None, str]]:
    from selfsup.report import plot_accuracy_per_epoch, plot_monitors, plot_training_curves, save_figure

    named = {f"t = {t:g}": run.rows for t, run in runs.items()}
    temperatures = [s["temperature"] for s in summaries]
    chance = 100.0 / data.num_classes
    figures = []

    figure, axes = new_figure(1, panel_size=(5.6, 3.8))
    axis = axes[0, 0]
    axis.plot(temperatures, [s["final_knn_top1"] for s in summaries], "o-", label="last epoch")
    axis.plot(temperatures, [s["best_knn_top1"] for s in summaries], "s--", alpha=0.6, label="best epoch")
    axis.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.3g}%)")
    axis.axhline(initial_knn, color="black", linestyle="-.", label=f"initial backbone ({initial_knn:.3g}%)")
    axis.set(xscale="log", title="SimCLR: kNN accuracy against temperature", xlabel="temperature t (log scale)",
             ylabel="kNN top-1 (%)")
    axis.set_xticks(temperatures, [f"{t:g}" for t in temperatures])
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figures.append(("kNN accuracy against temperature", save_figure(figure, out / "knn_vs_temperature.png"),
                    "kNN top-1 on the test images after the same budget at each temperature."))

    with_embeddings = [(t, run) for t, run in runs.items() if run.embeddings is not None]
    if with_embeddings:
        figure, axes = new_figure(len(with_embeddings), panel_size=(3.4, 3.0))
        bins = np.linspace(-1, 1, 61)
        for axis, (t, run) in zip(axes[0], with_embeddings):
            positives, negatives = pair_cosines(*run.embeddings)
            axis.hist(negatives.numpy(), bins=bins, density=True, alpha=0.6, color="C3", label="negative pairs")
            axis.hist(positives.numpy(), bins=bins, density=True, alpha=0.6, color="C0", label="positive pairs")
            axis.set(title=f"t = {t:g}", xlabel="cosine similarity", yticks=[])
        axes[0, 0].set_ylabel("density")
        axes[0, 0].legend(fontsize="small", loc="upper left")
        figures.append(("Positive and negative similarities",
                        save_figure(figure, out / "cosine_histograms.png"),
                        "Cosine similarities of the projections of two views of one image (positive) and of "
                        "two different images (negative), after training, on a fresh batch of views."))

        figure, axes = new_figure(2, panel_size=(5.0, 3.8))
        shown = [s for s in summaries if "top1pct_share" in s]
        left, right = axes[0]
        ts = [s["temperature"] for s in shown]
        left.plot(ts, [s["top1pct_share"] for s in shown], "o-", label="top 1% of negatives")
        left.plot(ts, [s["top10_share"] for s in shown], "s-", label="top 10 negatives")
        count = shown[0]["negatives_per_anchor"]
        left.axhline(max(1, round(0.01 * count)) / count, color="C0", linestyle=":", label="top 1% if uniform")
        left.axhline(min(10, count) / count, color="C1", linestyle=":", label="top 10 if uniform")
        left.set(xscale="log", yscale="log", title="gradient share of the hardest negatives",
                 xlabel="temperature t of the run (log)", ylabel="share of the negatives' weight")
        left.set_xticks(ts, [f"{t:g}" for t in ts])
        left.grid(alpha=0.3)
        left.legend(fontsize="small")
        grid = np.geomspace(0.02, 2.0, 40)
        for index, (t, run) in enumerate(with_embeddings):
            effective = [hardest_negative_shares(*run.embeddings, float(g))["effective_negatives"] / count
                         for g in grid]
            right.plot(grid, effective, color=f"C{index}", label=f"embeddings of t = {t:g}")
            own = next(s for s in shown if s["temperature"] == t)["effective_negatives"] / count
            right.plot([t], [own], "o", color=f"C{index}")
        right.set(xscale="log", yscale="log", title="effective number of negatives",
                  xlabel="temperature t in the loss (log)", ylabel=f"fraction of the {count} negatives")
        right.grid(alpha=0.3)
        right.legend(fontsize="small")
        figures.append(("How strongly the loss weights the hardest negatives",
                        save_figure(figure, out / "hard_negatives.png"),
                        "Left: of the weight NT-Xent's gradient gives the negatives of an anchor, the share the "
                        "hardest (most similar) ones get, on each run's final embeddings at its own temperature. "
                        "Right: exp(entropy) of those weights as a fraction of all negatives, for each run's "
                        "embeddings as the loss temperature varies (dots: the run's own temperature)."))

    figures.append(("kNN accuracy per epoch", plot_accuracy_per_epoch(named, out / "accuracy.png", chance), ""))
    figures.append(("Embedding monitors", plot_monitors(named, out / "monitors.png", embedding_dim), ""))
    figures.append(("Training curves", plot_training_curves(named, out / "training_curves.png"),
                    "The loss values of different temperatures are not comparable with each other."))
    return figures


@dataclass(frozen=True)
class TemperatureSettings(ExperimentSettings):
    """``selfsup experiment temperature``: SimCLR's settings and the temperatures to sweep."""

    pretrain: PretrainConfig = field(default_factory=lambda: experiment_pretrain_config(
        "simclr", "runs/experiment-temperature", gather_distributed=False))  # one process: nothing to gather
    # The NT-Xent temperatures to train SimCLR at, one run each.
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"setting 'temperatures' must be positive numbers, got {list(self.temperatures)}")


def run_temperature_experiment(settings: TemperatureSettings, command: str = "", log: Log = print) -> dict:
    """Train SimCLR once per temperature (same seed, data, views and budget) and write ``report.md``,
    PNG figures and ``results.json`` to ``settings.pretrain.out``; returns the results."""
    config = settings.pretrain
    temperatures = sorted({float(t) for t in settings.temperatures})
    out = Path(config.out)
    data = load_experiment_data(settings)
    log(f"SimCLR temperature sweep {temperatures} on {data.train.name} ({len(data.train)} images, "
        f"{data.image_size} px), kNN on {data.test.name} ({len(data.test)} images)")
    initial_knn = initial_knn_top1(settings, data)
    runs = {t: train_variant(f"t={t:g}", variant_config(settings, "simclr", temperature=t), settings, data, log=log)
            for t in temperatures}
    summaries = [_summary(run, t) for t, run in runs.items()]
    finite = [s for s in summaries if math.isfinite(s["final_knn_top1"])]
    best = max(finite, key=lambda s: s["final_knn_top1"]) if finite else None
    embedding_dim = config.method_args.projection_dim

    header = ["temperature", "kNN top-1 (%)", "best epoch kNN (%)", "mean positive cos", "mean negative cos",
              "top-1% share", "top-10 share", "effective negatives"]
    table_rows = [[s["temperature"], s["final_knn_top1"], s["best_knn_top1"], s.get("positive_cosine_mean", ""),
                   s.get("negative_cosine_mean", ""), s.get("top1pct_share", ""), s.get("top10_share", ""),
                   s.get("effective_negatives", "")] for s in summaries]
    results = {"experiment": "temperature", "command": command, "settings": to_dict(settings),
               "train_data": data.train.name, "train_images": len(data.train), "test_data": data.test.name,
               "test_images": len(data.test), "image_size": data.image_size,
               "initial_knn_top1": initial_knn, "chance_top1": 100.0 / data.num_classes, "runs": summaries,
               "best_temperature": best["temperature"] if best else None,
               "best_inside_range": bool(best and temperatures[0] < best["temperature"] < temperatures[-1])}

    lines = ["# SimCLR: what the temperature does", ""]
    if command:
        lines += ["```", command, "```", ""]
    steps = max((row["step"] for run in runs.values() for row in run.rows), default=0)
    lines += [f"SimCLR at {len(temperatures)} temperatures, each for {config.epochs} epochs ({steps} steps, batch "
              f"{config.batch_size}) on {len(data.train)} images of {data.train.name} at {data.image_size} px, "
              f"ResNet-18 at width {config.width:g}; kNN (k = {config.knn_k}) on {len(data.test)} images of "
              f"{data.test.name}. Chance is {100.0 / data.num_classes:.3g}%; the "
              f"randomly initialised backbone that every run starts from has a kNN top-1 of {initial_knn:.2f}%.", ""]
    if best:
        where = "inside the range" if results["best_inside_range"] else "at an end of the range"
        lines += [f"**Best kNN accuracy: {best['final_knn_top1']:.2f}% at t = {best['temperature']:g}** ({where}).", ""]
    lines += [markdown_table(header, table_rows), ""]
    figures = []
    try:
        figures = _figures(runs, summaries, out, data, embedding_dim, initial_knn)
    except ImportError:
        lines += ["Figures skipped: matplotlib is not installed (`pip install matplotlib`).", ""]
    return write_experiment_outputs(out, lines, figures, results,
                                    {f"t{t:g}": run.rows for t, run in runs.items()}, header, table_rows, log)
