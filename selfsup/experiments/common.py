"""What the experiments share: their settings (a :class:`PretrainConfig` plus the experiment's own), the data
(optionally a stratified subset), and training one variant with the pretraining step
(:class:`selfsup.train.step.TrainingStep`), logging the monitors and the kNN accuracy per epoch.

A variant is a pretraining config: the method and its options (a temperature, BYOL without its predictor or
with a constant momentum) are settings, so every variant runs the one training step. Experiments keep no
checkpoints and run in one process.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from selfsup.config import PretrainConfig, resolve
from selfsup.data.datasets import (
    BUILTIN_DATASETS,
    ImageData,
    decode_into_memory,
    default_datasets_dir,
    load_folder_data,
    load_image_data,
    match_classes,
)
from selfsup.data.subsets import stratified_sample, subset_data
from selfsup.devices import resolve_device
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.files import write_json
from selfsup.schedules import capped_warmup_steps, scaled_learning_rate
from selfsup.train.build import auto_image_size, build_backbone, build_batches, build_method, channel_stats
from selfsup.train.optim import build_optimizer, build_scheduler
from selfsup.train.step import NonFiniteLossError, TrainingStep

Log = Callable[[str], None]

# The pretraining settings an experiment takes from its flags; the others keep their defaults (an experiment
# writes no checkpoints, runs one process and evaluates by kNN per epoch).
PRETRAIN_FLAGS = ("data", "test_data", "out", "epochs", "batch_size", "backbone", "backbone_args", "backbone_weights",
                  "width", "image_size",
                  "crop_size", "crop_min_scale", "blur", "optimizer", "base_lr", "weight_decay", "warmup_epochs",
                  "lars_trust_coefficient", "lars_clip", "precision", "grad_clip", "knn_k", "knn_temperature",
                  "log_every", "device", "num_workers", "seed")


def cifar10_split(split: str) -> str:
    """CIFAR-10's ``train`` or ``test`` folder in the shared datasets folder, the experiments' default data."""
    return str(default_datasets_dir() / "cifar10" / split)


def experiment_pretrain_config(method: str, out: str, **method_args) -> PretrainConfig:
    """An experiment's default pretraining settings: CIFAR-10, 10 epochs, a tenth of them warming up (SimCLR
    and BYOL warm up for 10 of their 100-1000 epochs), the method's paper values otherwise (LARS: the
    experiments ask how the papers' recipes behave)."""
    return PretrainConfig(method=method, method_args=method_args, data=cifar10_split("train"), out=out, epochs=10,
                          optimizer="lars", warmup_epochs=1.0, log_every=5, online_probe=False, eval_at_end=False,
                          report=False, progress=False)


@dataclass(frozen=True)
class ExperimentSettings:
    """The settings every experiment takes (the flags of ``selfsup experiment ...``)."""

    # The pretraining settings each variant runs with; the variants differ only in the method's options.
    pretrain: PretrainConfig = field(default_factory=lambda: experiment_pretrain_config("simclr", "runs/experiment"))
    # Train on this many images, drawn stratified by class; None: all of them.
    subset: int | None = None
    # Evaluate kNN on this many test images, drawn stratified; None: all of them.
    test_subset: int | None = None
    # Pairs of views whose embeddings are analysed at the end of each run.
    analysis_pairs: int = 512
    # CPU threads for torch; None: torch's choice (1 is often fastest on a busy shared machine).
    threads: int | None = None

    pretrain_flags: ClassVar[tuple[str, ...]] = PRETRAIN_FLAGS

    def __post_init__(self) -> None:
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"setting '{name}' must be >= 2 images, got {value}")
        if self.analysis_pairs < 1:
            raise ValueError(f"setting 'analysis_pairs' must be >= 1, got {self.analysis_pairs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"setting 'threads' must be >= 1, got {self.threads}")


@dataclass
class ExperimentData:
    train: ImageData
    test: ImageData
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _load(spec: str, split: str, count: int | None, seed: int, setting: str) -> ImageData:
    path = Path(spec).expanduser()
    if count is not None and path.is_dir():
        # Draw the subset from the file list, so that only the chosen images are decoded.
        data = load_folder_data(path, in_memory=False)
        if data.labels is None:
            raise ValueError(f"setting '{setting}': {spec} has no class sub-folders; experiments need labels")
    else:
        data = load_image_data(spec, split, progress=False)
    if data.labels is None:
        raise ValueError(f"setting '{setting}': {spec} has no labels; experiments need labelled data "
                         "(an ImageFolder layout with one sub-folder per class)")
    if count is not None:
        if count > len(data):
            raise ValueError(f"setting '{'subset' if setting == 'data' else 'test_subset'}' ({count}) is larger "
                             f"than {spec} ({len(data)} images)")
        data = subset_data(data, stratified_sample(data.labels, count, seed), name=f"{data.name}[{count}]")
    return decode_into_memory(data)


def default_data_specs(settings: ExperimentSettings) -> tuple[str, str]:
    """The train and test data settings; CIFAR-10's test folder goes with its train folder, a built-in data
    set's test split with the set."""
    train, test = settings.pretrain.data, settings.pretrain.test_data
    if test is not None:
        return train, test
    if train == cifar10_split("train"):
        return train, cifar10_split("test")
    if train in BUILTIN_DATASETS:
        return train, train
    raise ValueError(f"setting 'test_data' is needed: {train} is not a built-in data set with a test "
                     "split; give --test-data")


def load_experiment_data(settings: ExperimentSettings) -> ExperimentData:
    train_spec, test_spec = default_data_specs(settings)
    if train_spec == cifar10_split("train") and not Path(train_spec).exists():
        raise FileNotFoundError(f"CIFAR-10 not found at {train_spec}: give --data (and --test-data), or set "
                                "SELFSUP_DATASETS to the folder holding cifar10/")
    train = _load(train_spec, "train", settings.subset, settings.pretrain.seed, "data")
    test = match_classes(train, _load(test_spec, "test", settings.test_subset, settings.pretrain.seed, "test_data"))
    image_size = auto_image_size(settings.pretrain, train)
    mean, std = channel_stats(train)
    return ExperimentData(train=train, test=test, image_size=image_size, mean=mean, std=std)


def variant_config(settings: ExperimentSettings, method: str, **method_args) -> PretrainConfig:
    """The experiment's pretraining settings for ``method``, with ``method_args`` over its options (a variant)."""
    config = settings.pretrain
    base = dataclasses.asdict(config.method_args) if method == config.method else {}
    return dataclasses.replace(config, method=method, method_args={**base, **method_args})


@dataclass
class VariantRun:
    """One trained variant: its logged rows (the keys of metrics.jsonl) and what the analyses need."""

    name: str
    rows: list[dict] = field(default_factory=list)
    method: nn.Module | None = None
    final_knn_top1: float = math.nan
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # final projections of view pairs (N, D)
    diverged: bool = False
    seconds: float = 0.0


def knn_top1(backbone: nn.Module, data: ExperimentData, config: PretrainConfig, device) -> float:
    train = extract_features(backbone, data.train, data.image_size, data.mean, data.std, device=device,
                             num_workers=config.num_workers)
    test = extract_features(backbone, data.test, data.image_size, data.mean, data.std, device=device,
                            num_workers=config.num_workers)
    if not (torch.isfinite(train).all() and torch.isfinite(test).all()):
        return math.nan
    return knn_accuracy(train, data.train.labels, test, data.test.labels, data.num_classes, config.knn_k,
                        config.knn_temperature)


def initial_knn_top1(settings: ExperimentSettings, data: ExperimentData) -> float:
    """kNN top-1 (%) of the backbone every variant starts from (same seed, so the same weights): the level
    that training must beat, above chance since even random convolutions give usable features."""
    torch.manual_seed(settings.pretrain.seed)
    backbone = build_backbone(settings.pretrain, data.image_size)
    device = resolve_device(settings.pretrain.device)
    return knn_top1(backbone.to(device), data, settings.pretrain, device)


@torch.no_grad()
def final_embeddings(method: nn.Module, batches, epoch: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of up to ``pairs`` pairs of views drawn as in training (epoch ``epoch``, one not trained
    on), with the network in training mode as the loss saw it; BatchNorm statistics are put back after."""
    saved = {key: value.clone() for key, value in method.state_dict().items() if "running" in key or
             "num_batches" in key}
    first, second = [], []
    for *views, _ in batches.epoch(epoch):
        z1, z2 = method(*views).embeddings
        first.append(z1.float().cpu())
        second.append(z2.float().cpu())
        if sum(len(z) for z in first) >= pairs:
            break
    method.load_state_dict(saved, strict=False)
    return torch.cat(first)[:pairs], torch.cat(second)[:pairs]


def train_variant(name: str, config: PretrainConfig, settings: ExperimentSettings, data: ExperimentData,
                  log: Log = print) -> VariantRun:
    """Pretrain ``config``'s method on ``data.train`` for ``config.epochs`` epochs with the training step.

    Every variant starts from the same weights (the seed is set before the backbone is built) and sees
    the same batches and views. Rows: every ``log_every`` steps the step's monitors
    (:meth:`TrainingStep.monitors`); after each epoch the kNN top-1 (%) on ``data.test``. A non-finite loss
    ends the variant early with ``diverged`` set.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    backbone = build_backbone(config, data.image_size)
    method = build_method(config, backbone).to(device)
    batches = build_batches(config, data.train, config.crop_size or data.image_size, data.mean, data.std, device)
    total_steps = config.epochs * len(batches)
    warmup_steps = capped_warmup_steps(config.warmup_epochs, len(batches), total_steps)
    hyper = resolve(config)
    optimizer = build_optimizer(hyper.optimizer, method.learnable_parameters(),
                                scaled_learning_rate(hyper.base_lr, config.batch_size), hyper.weight_decay,
                                lars_trust_coefficient=config.lars_trust_coefficient, lars_clip=config.lars_clip)
    training_step = TrainingStep(method, optimizer, build_scheduler(optimizer, total_steps, warmup_steps),
                                 total_steps, len(batches), precision=config.precision, grad_clip=config.grad_clip,
                                 channels_last=bool(config.channels_last), device_type=device.type)
    run = VariantRun(name=name, method=method)
    start = time.perf_counter()
    step = 0
    method.train()
    for epoch in range(config.epochs):
        for *views, _ in batches.epoch(epoch):
            try:
                result = training_step(views, step, epoch)
            except NonFiniteLossError as error:
                log(f"[{name}] {str(error).split('. ')[0]}: stopping this variant")
                run.diverged = True
                break
            step += 1
            if step % config.log_every == 0 or step == total_steps:
                run.rows.append({"step": step, "epoch": epoch + 1, **training_step.monitors(result)})
        if run.diverged:
            break
        accuracy = knn_top1(backbone, data, config, device)
        run.rows.append({"step": step, "epoch": epoch + 1, "knn_top1": round(accuracy, 2)})
        last_loss = next((r["loss"] for r in reversed(run.rows) if "loss" in r), math.nan)
        log(f"[{name}] epoch {epoch + 1}/{config.epochs}  step {step}  loss {last_loss:.4f}  "
            f"kNN top-1 {accuracy:.2f}%  ({time.perf_counter() - start:.0f} s)")
    run.final_knn_top1 = next((r["knn_top1"] for r in reversed(run.rows) if "knn_top1" in r), math.nan)
    if not run.diverged:
        run.embeddings = final_embeddings(method, batches, config.epochs, settings.analysis_pairs)
    run.seconds = round(time.perf_counter() - start, 1)
    return run


def format_text_table(header: list[str], rows: list[list]) -> str:
    """A plain-text table for the terminal, columns right-aligned after the first."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in cells]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in cells])


def new_figure(ncols: int, nrows: int = 1, panel_size: tuple[float, float] = (4.6, 3.4)):
    """A matplotlib Figure (Agg, pyplot's global state untouched) and its (nrows, ncols) axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    return figure, figure.subplots(nrows, ncols, squeeze=False)


def write_experiment_outputs(out: Path, lines: list[str], figures: list, results: dict, runs: dict[str, list],
                             header: list[str], table_rows: list[list], log: Callable[[str], None]) -> dict:
    """Finish an experiment's report: figure sections, per-run metric rows, report.md, results.json."""
    from selfsup.files import atomic_write_text

    for heading, path, caption in figures:
        if path is not None:
            lines += [f"## {heading}", "", f"![{heading}]({path.name})", ""] + ([caption, ""] if caption else [])
    results["figures"] = [str(path) for _, path, _ in figures if path is not None]
    for name, rows in runs.items():
        write_json(out / "runs" / f"{name}.json", rows)
    atomic_write_text(out / "report.md", "\n".join(lines))
    write_json(out / "results.json", results)
    log(format_text_table(header, table_rows))
    log(f"report: {out / 'report.md'}")
    return results

