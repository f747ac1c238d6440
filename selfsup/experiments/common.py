"""What the experiments share: their settings, the data (optionally a stratified subset), and a short
pretraining loop that trains one variant and logs the monitors and the kNN accuracy per epoch.

The loop is the step of :func:`selfsup.train.loop.pretrain` without checkpoints, resume or processes, and
with the method object and the target-momentum rule given by the caller: an ablation needs variants
(no predictor, a constant momentum) that the pretraining settings deliberately do not offer. The view
recipes, backbone, optimizer and schedule are the pretraining loop's own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup.config import PretrainConfig, resolve
from selfsup.data.datasets import SMALL_IMAGE_SIDE, ImageData, default_datasets_dir, load_image_data, scan_folder
from selfsup.data.images import read_rgb_image, square_resize
from selfsup.data.subsets import stratified_sample, subset_data
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.monitors import embedding_monitors
from selfsup.train.loop import auto_image_size, build_backbone, build_batches, channel_stats, resolve_device
from selfsup.train.optim import build_optimizer
from selfsup.train.schedules import scaled_learning_rate, warmup_cosine

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExperimentSettings:
    """The settings every experiment takes (the flags of ``selfsup experiment ...``)."""

    data: str | None = None  # None: CIFAR-10 train from the shared datasets folder
    test_data: str | None = None  # None: CIFAR-10 test with the default data, a built-in's test split
    out: str = "runs/experiment"
    epochs: int = 10
    batch_size: int = 256
    width: float = 1.0
    image_size: int | None = None
    subset: int | None = None  # train on this many images, stratified by class
    test_subset: int | None = None  # evaluate kNN on this many test images, stratified
    optimizer: str = "lars"
    base_lr: float | None = None  # None: the method's paper value per 256 images (selfsup.config.resolve)
    # SimCLR and BYOL warm up for 10 of their 100-1000 epochs; a CPU run of a few epochs warms up for the
    # same tenth of its length instead, so that most of its few steps run at the full learning rate.
    warmup_fraction: float = 0.1
    projection_hidden_dim: int | None = None
    projection_dim: int | None = None
    prediction_hidden_dim: int = 4096
    knn_k: int = 200
    knn_temperature: float = 0.1
    log_every: int = 5
    analysis_pairs: int = 512  # pairs of views whose embeddings are analysed at the end of each run
    device: str = "auto"
    num_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "knn_k", "log_every", "analysis_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting '{name}' must be >= 1, got {getattr(self, name)}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"setting '{name}' must be >= 2 images, got {value}")
        if not self.width > 0:
            raise ValueError(f"setting 'width' must be > 0, got {self.width}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"setting 'warmup_fraction' must be in [0, 1), got {self.warmup_fraction}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"setting 'image_size' must be >= 8, got {self.image_size}")


@dataclass
class ExperimentData:
    train: ImageData
    test: ImageData
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return max(self.train.num_classes, int(self.test.labels.max()) + 1)


def _in_memory(data: ImageData) -> ImageData:
    """Decode the images of ``data`` (on disk) into memory when they are small, as load_image_data does."""
    if data.in_memory or not data.paths:
        return data
    side = max(read_rgb_image(data.paths[0]).size)
    if side > SMALL_IMAGE_SIDE:
        return data
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(lambda p: np.asarray(square_resize(read_rgb_image(p), side)), data.paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageData(name=data.name, images=images, labels=data.labels, classes=data.classes)


def _load(spec: str, split: str, count: int | None, seed: int, setting: str) -> ImageData:
    path = Path(spec).expanduser()
    if count is not None and path.is_dir():
        # Draw the subset from the file list, so that only the chosen images are decoded.
        paths, labels, classes = scan_folder(path)
        if labels is None:
            raise ValueError(f"setting '{setting}': {spec} has no class sub-folders; experiments need labels")
        data = ImageData(name=path.name, paths=paths, labels=torch.tensor(labels), classes=classes)
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
    return _in_memory(data)


def default_data_specs(settings: ExperimentSettings) -> tuple[str, str]:
    """The train and test data settings, with CIFAR-10 from the shared datasets folder as the default."""
    cifar = default_datasets_dir() / "cifar10"
    train = settings.data if settings.data is not None else str(cifar / "train")
    if settings.test_data is not None:
        return train, settings.test_data
    if settings.data is None:
        return train, str(cifar / "test")
    if settings.data in ("digits", "fashion-mnist"):
        return train, settings.data
    raise ValueError(f"setting 'test_data' is needed: {settings.data} is not a built-in data set with a test "
                     "split; give --test-data")


def load_experiment_data(settings: ExperimentSettings) -> ExperimentData:
    train_spec, test_spec = default_data_specs(settings)
    if settings.data is None and not Path(train_spec).exists():
        raise FileNotFoundError(f"CIFAR-10 not found at {train_spec}: give --data (and --test-data), or set "
                                "SELFSUP_DATASETS to the folder holding cifar10/")
    train = _load(train_spec, "train", settings.subset, settings.seed, "data")
    test = _load(test_spec, "test", settings.test_subset, settings.seed, "test_data")
    config = PretrainConfig(image_size=settings.image_size)
    image_size = auto_image_size(config, train)
    mean, std = channel_stats(train)
    return ExperimentData(train=train, test=test, image_size=image_size, mean=mean, std=std)


def pretrain_config(settings: ExperimentSettings, method: str) -> PretrainConfig:
    """The pretraining settings a variant runs with (view recipes, backbone, optimizer)."""
    return PretrainConfig(method=method, epochs=settings.epochs, batch_size=settings.batch_size,
                          width=settings.width, image_size=settings.image_size, optimizer=settings.optimizer,
                          base_lr=settings.base_lr, projection_hidden_dim=settings.projection_hidden_dim,
                          projection_dim=settings.projection_dim,
                          prediction_hidden_dim=settings.prediction_hidden_dim, seed=settings.seed,
                          device=settings.device, num_workers=settings.num_workers, online_probe=False)


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


def knn_top1(backbone: nn.Module, data: ExperimentData, settings: ExperimentSettings, device) -> float:
    train = extract_features(backbone, data.train, data.image_size, data.mean, data.std, device=device,
                             num_workers=settings.num_workers)
    test = extract_features(backbone, data.test, data.image_size, data.mean, data.std, device=device,
                            num_workers=settings.num_workers)
    if not (torch.isfinite(train).all() and torch.isfinite(test).all()):
        return math.nan
    return knn_accuracy(train, data.train.labels, test, data.test.labels, data.num_classes, settings.knn_k,
                        settings.knn_temperature)


def initial_knn_top1(settings: ExperimentSettings, data: ExperimentData) -> float:
    """kNN top-1 (%) of the backbone every variant starts from (same seed, so the same weights): the level
    that training must beat, above chance since even random convolutions give usable features."""
    torch.manual_seed(settings.seed)
    backbone = build_backbone(pretrain_config(settings, "simclr"), data.image_size)
    device = resolve_device(settings.device)
    return knn_top1(backbone.to(device), data, settings, device)


@torch.no_grad()
def final_embeddings(method: nn.Module, batches, epoch: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of up to ``pairs`` pairs of views drawn as in training (epoch ``epoch``, one not trained
    on), with the network in training mode as the loss saw it; BatchNorm statistics are put back after."""
    saved = {key: value.clone() for key, value in method.state_dict().items() if "running" in key or
             "num_batches" in key}
    first, second = [], []
    for view1, view2, _ in batches.epoch(epoch):
        z1, z2 = method(view1, view2).embeddings
        first.append(z1.float().cpu())
        second.append(z2.float().cpu())
        if sum(len(z) for z in first) >= pairs:
            break
    method.load_state_dict(saved, strict=False)
    return torch.cat(first)[:pairs], torch.cat(second)[:pairs]


def train_variant(name: str, build_method: Callable[[nn.Module], nn.Module], method_name: str,
                  settings: ExperimentSettings, data: ExperimentData,
                  momentum_at: Callable[[int, int], float] | None = None, log: Log = print) -> VariantRun:
    """Pretrain ``build_method(backbone)`` on ``data.train`` for ``settings.epochs`` epochs.

    Every variant starts from the same weights (the seed is set before the backbone is built) and sees
    the same batches and views. ``momentum_at(step, total_steps)`` is the target momentum applied after
    each step (methods without a target ignore it). Rows: every ``log_every`` steps the loss, learning
    rate, momentum and :func:`selfsup.eval.monitors.embedding_monitors` of the batch; after each epoch the
    kNN top-1 (%) on ``data.test``. A non-finite loss ends the variant early with ``diverged`` set.
    """
    config = pretrain_config(settings, method_name)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    backbone = build_backbone(config, data.image_size)
    method = build_method(backbone).to(device)
    batches = build_batches(config, data.train, data.image_size, data.mean, data.std, device)
    steps_per_epoch = len(batches)
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = round(settings.warmup_fraction * total_steps)
    hyper = resolve(config)
    optimizer = build_optimizer(config.optimizer, method, scaled_learning_rate(hyper.base_lr, settings.batch_size),
                                hyper.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps))
    run = VariantRun(name=name, method=method)
    start = time.perf_counter()
    step = 0
    method.train()
    for epoch in range(settings.epochs):
        for view1, view2, _ in batches.epoch(epoch):
            lr = optimizer.param_groups[0]["lr"]
            output = method(view1, view2)
            if not torch.isfinite(output.loss.detach()):
                log(f"[{name}] loss is {output.loss.item()} at step {step}: stopping this variant")
                run.diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            scheduler.step()
            momentum = momentum_at(step, total_steps) if momentum_at is not None else None
            if momentum is not None:
                method.update_target(momentum)
            step += 1
            if step % settings.log_every == 0 or step == total_steps:
                row = {"step": step, "epoch": epoch + 1, "loss": round(output.loss.item(), 6), "lr": lr}
                if momentum is not None:
                    row["momentum"] = momentum
                row.update({k: round(v, 6) for k, v in embedding_monitors(*output.embeddings).items()})
                run.rows.append(row)
        if run.diverged:
            break
        accuracy = knn_top1(backbone, data, settings, device)
        run.rows.append({"step": step, "epoch": epoch + 1, "knn_top1": round(accuracy, 2)})
        last_loss = next((r["loss"] for r in reversed(run.rows) if "loss" in r), math.nan)
        log(f"[{name}] epoch {epoch + 1}/{settings.epochs}  step {step}  loss {last_loss:.4f}  "
            f"kNN top-1 {accuracy:.2f}%  ({time.perf_counter() - start:.0f} s)")
    run.final_knn_top1 = next((r["knn_top1"] for r in reversed(run.rows) if "knn_top1" in r), math.nan)
    if not run.diverged:
        run.embeddings = final_embeddings(method, batches, settings.epochs, settings.analysis_pairs)
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


def write_json(path: Path, value) -> Path:
    """``value`` as indented JSON, written atomically; NaN becomes null (JSON has no NaN)."""
    from selfsup.files import atomic_write_bytes

    def clean(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {str(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        return item

    return atomic_write_bytes(Path(path), (json.dumps(clean(value), indent=2) + "\n").encode("utf-8"))


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

