"""Pretraining: data -> two views -> method -> loss -> optimizer, with checkpoints, logs and evaluation.

Plain PyTorch rather than a trainer framework: the step is short enough to read here, and owning it
keeps resume exact (every random draw is a function of seed, epoch and batch; see selfsup.data.loading).
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup import dist
from selfsup.config import PretrainConfig, resolve, to_dict
from selfsup.data.datasets import ImageData, load_image_data
from selfsup.data.loading import FileTwoViewBatches, InMemoryTwoViewBatches, PerImageTwoViews
from selfsup.eval.monitors import collapse_warning, embedding_monitors
from selfsup.eval.pretrained import backbone_config
from selfsup.methods import BYOL, SimCLR, cosine_momentum
from selfsup.models import ResNetBackbone
from selfsup.train.checkpoint import (
    atomic_write_text,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from selfsup.train.logging import MetricsLog
from selfsup.train.optim import build_optimizer
from selfsup.train.schedules import scaled_learning_rate, warmup_cosine
from selfsup.transforms.views import IMAGENET_MEAN, IMAGENET_STD, TwoViewTransform, byol_views, simclr_view


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message gives the step, the learning rate and likely causes."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved before stopping."""


@dataclass
class PretrainResult:
    out_dir: Path
    backbone: ResNetBackbone
    steps: int
    checkpoint: Path | None
    table: dict | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def channel_stats(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of in-memory data; ImageNet's for data streamed from disk."""
    if data.images is None:
        return IMAGENET_MEAN, IMAGENET_STD
    sample = data.images[:: max(1, len(data) // 10000)].float().div_(255)
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in sample.mean(dim=(0, 2, 3)).tolist()), tuple(round(v, 4) for v in std.tolist())


def auto_image_size(config: PretrainConfig, data: ImageData) -> int:
    if config.image_size is not None:
        return config.image_size
    return max(data.image_side, 16) if data.in_memory else 224


def build_backbone(config: PretrainConfig, image_size: int) -> ResNetBackbone:
    cifar_stem = config.cifar_stem if config.cifar_stem is not None else image_size <= 64
    return ResNetBackbone(config.backbone, cifar_stem=cifar_stem, width=config.width)


def build_method(config: PretrainConfig, backbone: nn.Module) -> BYOL | SimCLR:
    hp = resolve(config)
    if config.method == "byol":
        return BYOL(backbone, projection_hidden_dim=hp.projection_hidden_dim, projection_dim=hp.projection_dim,
                    prediction_hidden_dim=config.prediction_hidden_dim)
    return SimCLR(backbone, projection_hidden_dim=hp.projection_hidden_dim, projection_dim=hp.projection_dim,
                  temperature=config.temperature, gather_distributed=config.gather_distributed)


def _two_view_recipes(config: PretrainConfig, image_size: int, mean, std):
    if config.method == "simclr":
        first = second = simclr_view(image_size, config.color_strength, mean, std, blur=config.blur)
    else:
        first, second = byol_views(image_size, mean, std, blur=config.blur)
    crop_scale = (config.crop_min_scale, 1.0)
    return dataclasses.replace(first, crop_scale=crop_scale), dataclasses.replace(second, crop_scale=crop_scale)


def build_batches(config: PretrainConfig, data: ImageData, crop_size: int, mean, std, device: torch.device):
    first, second = _two_view_recipes(config, crop_size, mean, std)
    rank, world = dist.rank(), dist.world_size()
    if data.in_memory:
        try:
            from selfsup.transforms.batched import BatchedTwoViews, BatchedViewAugment

            two_views = BatchedTwoViews(BatchedViewAugment(first), BatchedViewAugment(second)).to(device)
        except ImportError:  # the per-image pipeline computes the same distributions, only slower
            from selfsup.transforms.views import view_transform

            two_views = PerImageTwoViews(TwoViewTransform(view_transform(first), view_transform(second)))
        return InMemoryTwoViewBatches(data, two_views, config.batch_size, config.seed, device, rank, world)
    from selfsup.transforms.views import view_transform

    transform = TwoViewTransform(view_transform(first), view_transform(second))
    return FileTwoViewBatches(data, transform, config.batch_size, config.seed, device, config.num_workers,
                              rank, world, config.skip_bad_images)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class _StopSignals:
    """Turns SIGINT / SIGTERM into a flag that the loop checks between steps."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def pretrain(config: PretrainConfig, resume: str | Path | None = None, log=print) -> PretrainResult:
    """Run pretraining as ``config`` says; ``resume`` a checkpoint file, or "auto" for the newest in out/."""
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_from_environment(device.type)
    world = dist.world_size()
    is_main = dist.is_main_process()
    log = log if is_main else (lambda *_: None)
    if config.batch_size % world:
        raise ValueError(f"setting 'batch_size' ({config.batch_size}) must be divisible by the number of "
                         f"processes ({world})")
    out_dir = Path(config.out)
    checkpoint_dir = out_dir / "checkpoints"

    data = load_image_data(config.data, "train", config.skip_bad_images, progress=config.progress and is_main)
    if data.skipped:
        log(f"skipped {len(data.skipped)} bad image(s); listed in {out_dir / 'skipped_images.txt'}")
    image_size = auto_image_size(config, data)
    mean, std = channel_stats(data)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    backbone = build_backbone(config, image_size)
    method = build_method(config, backbone)
    if world > 1 and config.sync_batchnorm:
        method = dist.convert_sync_batchnorm(method, device)  # online and target networks alike
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    model = method
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)

    crop_size = config.crop_size or image_size
    batches = build_batches(config, data, crop_size, mean, std, device)
    steps_per_epoch = len(batches)
    if steps_per_epoch < 1:
        raise ValueError(f"setting 'batch_size' ({config.batch_size}) leaves no full batch in {len(data)} images")
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps)
    hp = resolve(config)
    peak_lr = scaled_learning_rate(hp.base_lr, config.batch_size)
    predictor_lr_multiplier = config.predictor_lr_multiplier if config.method == "byol" else 1.0  # SimCLR has none
    optimizer = build_optimizer(config.optimizer, method, peak_lr, hp.weight_decay,
                                predictor_lr_multiplier=predictor_lr_multiplier,
                                lars_trust_coefficient=config.lars_trust_coefficient, lars_clip=config.lars_clip)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)

    probe = probe_optimizer = None
    if config.online_probe and data.labels is not None and data.num_classes >= 2:
        # BatchNorm without affine standardises the features, whose scale drifts while the backbone learns.
        probe = nn.Sequential(nn.BatchNorm1d(backbone.feature_dim, affine=False),
                              nn.Linear(backbone.feature_dim, data.num_classes)).to(device)
        if world > 1 and config.sync_batchnorm:
            probe = dist.convert_sync_batchnorm(probe, device)  # the global batch's statistics, as one process
        probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=0.0)

    step = 0
    if resume is not None:
        if str(resume) == "auto":
            found = list_checkpoints(checkpoint_dir)
            resume = dist.broadcast_object(found[-1] if found else None)  # every rank loads rank 0's pick
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        # The optimizer's settings travel in its state dict and would silently override this run's.
        before_the_settings = {"predictor_lr_multiplier": 1.0, "lars_trust_coefficient": 0.001, "lars_clip": False}
        saved_config = before_the_settings | state["config"]
        for key in ("method", "backbone", "image_size", *before_the_settings):
            saved = saved_config.get(key) if key != "image_size" else state.get("image_size")
            current = getattr(config, key) if key != "image_size" else image_size
            if saved != current:
                raise ValueError(f"cannot resume from {resume}: it was trained with {key}={saved!r}, "
                                 f"this run has {key}={current!r}")
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if probe is not None and "probe" in state:
            probe.load_state_dict(state["probe"])
            probe_optimizer.load_state_dict(state["probe_optimizer"])
        step = int(state["step"])
        log(f"resumed from {resume} at step {step}")

    def last_good_checkpoint() -> str:
        good = list_checkpoints(checkpoint_dir)
        return f" The last good checkpoint is {good[-1]}." if good else " No checkpoint was written before it."

    def save(at_step: int) -> Path | None:
        # An update can make the weights NaN before any loss shows it: such a state is never saved (nor
        # pushes good checkpoints out of the last K), so the newest checkpoint is always one to resume from.
        if not all(torch.isfinite(t).all() for t in method.state_dict().values() if t.is_floating_point()):
            raise NonFiniteLossError(
                f"the weights became NaN or infinite by step {at_step} (lr {optimizer.param_groups[0]['lr']:.4g}"
                "). Likely causes: a learning rate too high for this batch size, or fp16 overflow (try "
                "precision bf16 or fp32)." + last_good_checkpoint())
        if not is_main:
            return None
        state = {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": at_step,
                 "epoch": at_step // steps_per_epoch, "config": to_dict(config), "image_size": image_size,
                 "mean": list(mean), "std": list(std), "rng": _rng_state(),
                 "backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone),
                 "classes": data.classes or []}
        if probe is not None:
            state["probe"] = probe.state_dict()
            state["probe_optimizer"] = probe_optimizer.state_dict()
        path = checkpoint_path(checkpoint_dir, at_step)
        save_checkpoint(state, path)
        prune_checkpoints(checkpoint_dir, config.keep_checkpoints)
        return path

    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=step if resume is not None else None) \
        if is_main else None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json.dumps(to_dict(config), indent=2))
        if data.skipped:
            atomic_write_text(out_dir / "skipped_images.txt", "".join(f"{p}\t{why}\n" for p, why in data.skipped))
    crops = f" (views of {crop_size} px)" if crop_size != image_size else ""
    log(f"{config.method} on {data.name}: {len(data)} images at {image_size} px{crops}, {world} process(es), "
        f"{steps_per_epoch} steps/epoch x {config.epochs} epochs, lr {peak_lr:.4g}, {config.optimizer}")

    model.train()
    last_checkpoint = None
    window_images, window_start = 0, time.perf_counter()
    probe_correct = probe_seen = 0
    skipped_steps = 0
    warned_collapse = False
    progress_bar = None
    with _StopSignals() as stop:
        start_epoch, start_batch = divmod(step, steps_per_epoch)
        for epoch in range(start_epoch, config.epochs):
            if step >= last_step:
                break
            if is_main and config.progress:
                from tqdm import tqdm
                progress_bar = tqdm(total=steps_per_epoch, initial=start_batch if epoch == start_epoch else 0,
                                    desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False)
            for view1, view2, labels in batches.epoch(epoch, start_batch if epoch == start_epoch else 0):
                lr = optimizer.param_groups[0]["lr"]
                momentum = cosine_momentum(step, total_steps, config.momentum_base)
                if channels_last:
                    view1 = view1.contiguous(memory_format=torch.channels_last)
                    view2 = view2.contiguous(memory_format=torch.channels_last)
                # The forward pass updates BatchNorm's running statistics: a skipped step puts them back, else
                # one NaN batch leaves NaN statistics (and NaN features at evaluation) for good.
                saved_buffers = [b.detach().clone() for b in method.buffers()] \
                    if config.on_nonfinite == "skip" else None
                with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
                    output = model(view1, view2)
                loss = output.loss
                # Judged on the mean over ranks, so that a NaN on any rank skips the step on all of them.
                if not torch.isfinite(dist.all_reduce_mean(loss.detach())):
                    message = (f"loss is {loss.item()} at step {step} (epoch {epoch + 1}, lr {lr:.4g}). Likely "
                               "causes: a learning rate too high for this batch size, fp16 overflow (try "
                               "precision bf16 or fp32), or corrupt input images.")
                    if config.on_nonfinite == "stop":
                        raise NonFiniteLossError(message + last_good_checkpoint())
                    log("skipping step: " + message)
                    with torch.no_grad():
                        for buffer, saved in zip(method.buffers(), saved_buffers):
                            buffer.copy_(saved)
                    optimizer.zero_grad(set_to_none=True)
                    skipped_steps += 1
                    scheduler.step()
                    step += 1
                    if step >= last_step:
                        break
                    continue
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                method.update_target(momentum)
                step += 1

                if probe is not None and labels is not None:
                    logits = probe(output.features.float())
                    probe_loss = nn.functional.cross_entropy(logits, labels)
                    probe_optimizer.zero_grad(set_to_none=True)
                    probe_loss.backward()
                    dist.all_reduce_gradients_(probe.parameters())  # the same probe on every rank
                    probe_optimizer.step()
                    probe_correct += int((logits.argmax(1) == labels).sum())
                    probe_seen += len(labels)

                window_images += view1.shape[0] * world
                if progress_bar is not None:
                    progress_bar.update(1)
                if step % config.log_every == 0 or step == last_step:
                    loss_value = dist.all_reduce_mean(loss.detach()).item()
                    elapsed = time.perf_counter() - window_start
                    row = {"step": step, "epoch": epoch + 1, "loss": round(loss_value, 6), "lr": lr,
                           "images_per_s": round(window_images / max(elapsed, 1e-9), 1)}
                    if config.method == "byol":
                        row["momentum"] = momentum
                    row.update(_embedding_monitors(output.embeddings))
                    warning = collapse_warning(row, dim=hp.projection_dim)
                    if warning and not warned_collapse:
                        log(f"warning at step {step}: {warning}")
                        warned_collapse = True
                    if metrics is not None:
                        metrics.write(row)
                    if progress_bar is not None:
                        progress_bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}",
                                                 **({"m": f"{momentum:.4f}"} if config.method == "byol" else {}),
                                                 img_s=f"{row['images_per_s']:.0f}")
                    window_images, window_start = 0, time.perf_counter()
                if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                    last_checkpoint = save(step) or last_checkpoint
                if dist.any_rank(stop.received is not None):  # all ranks stop at the same step
                    last_checkpoint = save(step) or last_checkpoint
                    dist.barrier()
                    raise TrainingInterrupted(f"stopped by signal {stop.received} at step {step}; checkpoint "
                                              f"{last_checkpoint}; resume with --resume auto")
                if step >= last_step:
                    break
            if progress_bar is not None:
                progress_bar.close()
            epoch_row = {"step": step, "epoch": epoch + 1}
            if probe_seen:
                probe_correct, probe_seen = dist.all_reduce_mean(
                    torch.tensor([probe_correct, probe_seen], dtype=torch.float64, device=device)).tolist()
                epoch_row["online_probe_top1"] = round(100.0 * probe_correct / probe_seen, 2)
                probe_correct = probe_seen = 0
            if config.knn_every and (epoch + 1) % config.knn_every == 0 and is_main:
                epoch_row["knn_top1"] = _quick_knn(config, backbone, data, image_size, mean, std, device)
            if is_main and len(epoch_row) > 2:
                metrics.write(epoch_row)
                log("  ".join(f"{k} {v}" for k, v in epoch_row.items()))
            last_checkpoint = save(step) or last_checkpoint
            dist.barrier()
    if metrics is not None:
        metrics.close()
    if skipped_steps:
        log(f"{skipped_steps} step(s) skipped for a non-finite loss")

    table = None
    if is_main:
        atomic_write_text(out_dir / "backbone_config.json", json.dumps(
            {**backbone_config(backbone), "image_size": image_size, "mean": list(mean), "std": list(std)}))
        save_checkpoint({"backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone),
                         "image_size": image_size, "mean": list(mean), "std": list(std)},
                        out_dir / "backbone.pt")
        test_features = test = None
        if config.eval_at_end and data.labels is not None:
            table, test_features, test = _final_evaluation(config, backbone, data, image_size, mean, std, device,
                                                           log)
            if table is not None:
                atomic_write_text(out_dir / "eval.json", json.dumps(table, indent=2))
        if config.report:
            from selfsup.report import write_pretrain_report
            from selfsup.train.logging import read_metrics

            report = write_pretrain_report(
                out_dir, read_metrics(out_dir / "metrics.jsonl"), table,
                embeddings=test_features.numpy() if test_features is not None else None,
                labels=test.labels.numpy() if test is not None else None,
                embedding_dim=hp.projection_dim, class_names=data.classes, title=f"{config.method} on {data.name}")
            log(f"report: {report}")
    dist.barrier()
    return PretrainResult(out_dir=out_dir, backbone=backbone, steps=step, checkpoint=last_checkpoint, table=table)


def _embedding_monitors(embeddings: tuple[torch.Tensor, torch.Tensor]) -> dict:
    return {k: round(float(v), 5) for k, v in embedding_monitors(*embeddings).items()}


def _test_split(config: PretrainConfig, data: ImageData) -> ImageData | None:
    if config.test_data is not None:
        return load_image_data(config.test_data, "test", config.skip_bad_images, progress=False)
    if config.data in ("digits", "fashion-mnist"):
        return load_image_data(config.data, "test")
    return None


def _quick_knn(config, backbone, data, image_size, mean, std, device) -> float | None:
    from selfsup.eval.features import extract_features
    from selfsup.eval.knn import knn_accuracy

    test = _test_split(config, data)
    if test is None or test.labels is None:
        return None
    train_features = extract_features(backbone, data, image_size, mean, std, device=device,
                                      num_workers=config.num_workers)
    test_features = extract_features(backbone, test, image_size, mean, std, device=device,
                                     num_workers=config.num_workers)
    return round(knn_accuracy(train_features, data.labels, test_features, test.labels,
                              max(data.num_classes, 2), config.knn_k, config.knn_temperature), 2)


def _final_evaluation(config, backbone, data, image_size, mean, std, device, log):
    """The kNN / linear table on the test split, and the test features (for the embedding map)."""
    from selfsup.eval.features import extract_features
    from selfsup.eval.table import evaluation_table, format_table

    if data.labels is not None and data.num_classes < 2:
        log(f"{data.name} has {data.num_classes} class: skipping the kNN / linear table, which needs at least 2")
        return None, None, None
    test = _test_split(config, data)
    if test is None or test.labels is None or data.num_classes < 2:
        log("no labelled test data: skipping the kNN / linear table (give --test-data)")
        return None, None, None
    log(f"evaluating on {test.name} (kNN k={config.knn_k}, T={config.knn_temperature}; linear probe)")
    features = tuple(extract_features(backbone, d, image_size, mean, std, device=device,
                                      num_workers=config.num_workers) for d in (data, test))
    table = evaluation_table(backbone, data, test, image_size, mean, std, config.knn_k, config.knn_temperature,
                             linear_max_iter=config.linear_max_iter, device=device, seed=config.seed,
                             num_workers=config.num_workers, log=lambda *_: None, pretrained_features=features)
    log(format_table(table))
    return table, features[1], test
