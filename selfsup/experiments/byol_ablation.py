"""Why BYOL needs no negatives, by taking its parts away: BYOL as published, without the predictor, without
the moving average (target = online network, momentum 0), and with a constant random target (momentum 1),
each at the same budget from the same initial weights. Grill et al. 2020 (Table 5) report that the first
two collapse (0.3% top-1 on ImageNet) while the random target learns a little (18.8%).

Beside them, SimSiam (Chen and He 2021), the published answer to "does BYOL need the moving average?": no
target network at all, only the predictor and the stop-gradient, and no collapse (its sec. 4 and 5 explain
why: the stop-gradient is the part that prevents it, the predictor the part that makes it learn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from selfsup.config import PretrainConfig
from selfsup.experiments.common import (
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
from selfsup.monitors import collapse_warning, embedding_monitors
from selfsup.settings import to_dict

# The paper's tau_base is 0.996 for ImageNet runs of 300-1000 epochs; a short run needs a faster target, and
# solo-learn's CIFAR BYOL recipe uses 0.99.
DEFAULT_MOMENTUM_BASE = 0.99


@dataclass(frozen=True)
class Variant:
    name: str
    use_predictor: bool
    momentum: str  # how the target follows the online network, in words for the report
    method_args: dict  # the BYOL options that make the variant (SimSiam's options for the SimSiam row)
    method: str = "byol"


def variants(momentum_base: float = DEFAULT_MOMENTUM_BASE, projection_hidden_dim: int = 4096,
             projection_dim: int = 256) -> dict[str, Variant]:
    """The variants, by the key the command line uses: four settings of BYOL's options, and SimSiam with BYOL's
    projector sizes (two layers, as BYOL's and as SimSiam's own CIFAR-10 projector) and its predictor's
    bottleneck at a quarter of the output (the paper's 512 of 2048)."""
    cosine = f"EMA, cosine from {momentum_base:g} to 1"
    return {
        "byol": Variant("BYOL", True, cosine, {}),
        "no-predictor": Variant("no predictor", False, cosine, {"use_predictor": False}),
        "no-ema": Variant("no EMA (m = 0)", True, "target = online network (m = 0)",
                          {"momentum_schedule": "constant", "momentum_base": 0.0}),
        "random-target": Variant("random target (m = 1)", True, "constant random target (m = 1)",
                                 {"momentum_schedule": "constant", "momentum_base": 1.0}),
        "simsiam": Variant("SimSiam (no target network)", True, "none: stop-gradient on the online network",
                           {"projection_hidden_dim": projection_hidden_dim, "projection_dim": projection_dim,
                            "projection_layers": 2, "prediction_hidden_dim": max(1, projection_dim // 4)},
                           method="simsiam"),
    }


@dataclass(frozen=True)
class ByolAblationSettings(ExperimentSettings):
    """``selfsup experiment byol-ablation``: BYOL's settings (tau_base 0.99 for short runs) and the variants."""

    pretrain: PretrainConfig = field(default_factory=lambda: experiment_pretrain_config(
        "byol", "runs/experiment-byol-ablation", momentum_base=DEFAULT_MOMENTUM_BASE))
    # The variants to train: byol, no-predictor, no-ema (momentum 0), random-target (momentum 1), simsiam (SimSiam
    # with BYOL's projector sizes: no target network, predictor and stop-gradient).
    variants: tuple[Literal["byol", "no-predictor", "no-ema", "random-target", "simsiam"], ...] = (
        "byol", "no-predictor", "no-ema", "random-target", "simsiam")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variants:
            raise ValueError("setting 'variants' needs at least one variant")


def collapse_verdict(monitors: dict[str, float], dim: int) -> str:
    """"complete collapse", "dimensional collapse" or "no collapse", by :func:`collapse_warning`'s tests."""
    warning = collapse_warning(monitors, dim)
    if warning is None:
        return "no collapse"
    return "complete collapse" if "normalized std" in warning else "dimensional collapse"


def _summary(key: str, variant: Variant, run: VariantRun, dim: int, chance: float) -> dict:
    knn = [row["knn_top1"] for row in run.rows if "knn_top1" in row]
    summary = {"variant": key, "name": variant.name, "predictor": variant.use_predictor,
               "target": variant.momentum, "final_knn_top1": run.final_knn_top1,
               "best_knn_top1": max(knn) if knn else math.nan,
               "knn_above_chance": run.final_knn_top1 - chance, "diverged": run.diverged, "seconds": run.seconds}
    if run.embeddings is not None:
        monitors = embedding_monitors(*run.embeddings)
        summary |= {"monitors": monitors, "normalized_std": monitors["normalized_std"],
                    "std_over_isotropic": monitors["normalized_std"] * math.sqrt(dim),
                    "rankme": monitors["rankme"], "verdict": collapse_verdict(monitors, dim),
                    "warning": collapse_warning(monitors, dim)}
    else:
        summary["verdict"] = "diverged"
    return summary


def _final_knn_figure(summaries: list[dict], path: Path, chance: float, dim: int) -> Path:
    from selfsup.report import save_figure

    figure, axes = new_figure(2, panel_size=(4.8, 3.6))
    names = [s["name"] for s in summaries]
    positions = range(len(summaries))
    left, right = axes[0]
    left.bar(positions, [s["final_knn_top1"] for s in summaries], color=[f"C{i}" for i in positions])
    left.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.3g}%)")
    left.set(title="kNN top-1 after training", ylabel="kNN top-1 (%)")
    left.legend(fontsize="small")
    right.bar(positions, [s.get("std_over_isotropic", math.nan) for s in summaries],
              color=[f"C{i}" for i in positions])
    right.axhline(1.0, color="grey", linestyle="--", label="isotropic: 1/√D")
    right.axhline(0.2, color="red", linestyle=":", label="collapse warning")
    right.set(title=f"normalized std × √D (D = {dim})", ylabel="normalized std × √D")
    right.legend(fontsize="small")
    for axis in (left, right):
        axis.set_xticks(list(positions), names, rotation=20, ha="right")
        axis.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)


def run_byol_ablation(settings: ByolAblationSettings, command: str = "", log: Log = print) -> dict:
    """Train the chosen variants (all five by default) and write ``report.md``, PNG figures and
    ``results.json`` to ``settings.pretrain.out``; returns the results."""
    config = settings.pretrain
    momentum_base = config.method_args.momentum_base
    available = variants(momentum_base, config.method_args.projection_hidden_dim, config.method_args.projection_dim)
    chosen = list(dict.fromkeys(settings.variants))
    out = Path(config.out)
    data = load_experiment_data(settings)
    dim = config.method_args.projection_dim
    chance = 100.0 / data.num_classes
    log(f"BYOL ablation {chosen} on {data.train.name} ({len(data.train)} images, {data.image_size} px), "
        f"kNN on {data.test.name} ({len(data.test)} images)")
    initial_knn = initial_knn_top1(settings, data)
    runs = {key: train_variant(available[key].name,
                               variant_config(settings, available[key].method, **available[key].method_args),
                               settings, data, log=log)
            for key in chosen}
    summaries = [_summary(key, available[key], run, dim, chance) for key, run in runs.items()]
    for summary in summaries:
        summary["knn_change_from_initial"] = summary["final_knn_top1"] - initial_knn

    header = ["variant", "target", "kNN top-1 (%)", "kNN change from init", "normalized std", "std × √D",
              "RankMe", "verdict"]
    table_rows = [[s["name"], s["target"], s["final_knn_top1"], s["knn_change_from_initial"],
                   s.get("normalized_std", ""), s.get("std_over_isotropic", ""), s.get("rankme", ""), s["verdict"]]
                  for s in summaries]
    results = {"experiment": "byol-ablation", "command": command, "settings": to_dict(settings),
               "momentum_base": momentum_base, "train_data": data.train.name, "train_images": len(data.train),
               "test_data": data.test.name, "test_images": len(data.test), "image_size": data.image_size,
               "embedding_dim": dim, "isotropic_std": 1 / math.sqrt(dim), "initial_knn_top1": initial_knn,
               "chance_top1": chance,
               "runs": summaries}

    steps = max((row["step"] for run in runs.values() for row in run.rows), default=0)
    lines = ["# BYOL ablation: which parts keep it from collapsing, and SimSiam beside it", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"Each variant trained for {config.epochs} epochs ({steps} steps, batch {config.batch_size}) on "
              f"{len(data.train)} images of {data.train.name} at {data.image_size} px, ResNet-18 at width "
              f"{config.width:g}, from the same initial weights and with the same views (SimSiam with its own, MoCo v2's "
              f"augmentation); kNN (k = "
              f"{config.knn_k}) on {len(data.test)} images of {data.test.name}. Chance is {chance:.3g}%; the "
              f"randomly initialised backbone that every variant starts from has a kNN top-1 of {initial_knn:.2f}%.",
              "",
              f"The monitors are of the final projections (D = {dim}) of {settings.analysis_pairs} pairs of fresh "
              f"views: healthy embeddings have a normalized std near 1/√D = {1 / math.sqrt(dim):.4f} (std × √D "
              "near 1); complete collapse drives it to 0 (warning below 0.2), dimensional collapse drives "
              "RankMe towards 1.", "", markdown_table(header, table_rows), ""]
    for s in summaries:
        if s.get("warning"):
            lines += [f"- {s['name']}: {s['warning']}"]
    lines += [""]
    figures = []
    try:
        from selfsup.report import plot_accuracy_per_epoch, plot_monitors, plot_training_curves

        named = {available[key].name: run.rows for key, run in runs.items()}
        figures = [
            ("Embedding monitors", plot_monitors(named, out / "monitors.png", dim),
             "Normalized std and effective rank of the projections of each logged training batch."),
            ("kNN accuracy per epoch", plot_accuracy_per_epoch(named, out / "accuracy.png", chance), ""),
            ("After training", _final_knn_figure(summaries, out / "final.png", chance, dim), ""),
            ("Training curves", plot_training_curves(named, out / "training_curves.png"),
             "A collapsed BYOL reaches the lowest loss: predicting a constant is easy."),
        ]
    except ImportError:
        lines += ["Figures skipped: matplotlib is not installed (`pip install matplotlib`).", ""]
    return write_experiment_outputs(out, lines, figures, results,
                                    {key: run.rows for key, run in runs.items()}, header, table_rows, log)
