"""Pretraining's training loop: batches of two views -> :class:`TrainingStep`, with checkpoints, exact resume,
metrics and an online probe. Evaluation and the report come after it, in :mod:`selfsup.pipeline`.

Plain PyTorch rather than a trainer framework: owning the loop keeps resume exact (every random draw is a
function of seed, epoch and batch; see selfsup.data.loading). The loop never tests a method's name: it asks
the method (:mod:`selfsup.methods.base`) for its views, parameter groups and momentum rule.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup import dist
from selfsup.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from selfsup.config import PretrainConfig, ResolvedHyperparameters, changed_settings, resolve
from selfsup.data.datasets import ImageData
from selfsup.devices import resolve_device
from selfsup.files import atomic_write_text, write_json
from selfsup.methods import Method
from selfsup.models import ResNetBackbone, backbone_config
from selfsup.monitors import collapse_warning
from selfsup.schedules import capped_warmup_steps, scaled_learning_rate
from selfsup.settings import to_dict
from selfsup.train.build import (
    auto_image_size,
    build_backbone,
    build_batches,
    build_method,
    channel_stats,
    channel_stats_source,
    check_batch_size,
)
from selfsup.train.metrics_log import MetricsLog
from selfsup.train.optim import build_optimizer, build_scheduler
from selfsup.train.step import NonFiniteLossError, TrainingStep, likely_causes

Log = Callable[[str], None]


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved before stopping."""


@dataclass
class TrainedRun:
    """What training left: the method (its backbone the encoder), the step reached, the newest checkpoint, and
    what evaluation needs to see the images as training did."""

    out_dir: Path
    method: Method
    backbone: ResNetBackbone
    steps: int
    checkpoint: Path | None
    device: torch.device
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int | None


def start_processes(config: PretrainConfig) -> torch.device:
    """The run's device (and torch's CPU threads, when set); joins the process group that torchrun describes, if
    any."""
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_from_environment(device.type)
    return device


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _above_bar(log: Log) -> Log:
    """``log`` printing above the progress bar (tqdm redraws it below the line), not through it."""
    from tqdm import tqdm

    def write(message: str) -> None:
        with tqdm.external_write_mode():
            log(message)

    return write


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
        if self.received is not None:  # a second Ctrl-C: the user does not want to wait for the checkpoint
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _saved_hyperparameters(state: dict, batch_size: int) -> tuple[str | None, float | None, float | None]:
    """(optimizer, base learning rate per 256 images, weight decay) a checkpoint was trained with: recorded since
    optimizer auto (whose choice can change between versions); before that, read from its optimizer's state (the
    options its parameter groups carry, the scheduler's peak rate, the largest decay of a group)."""
    if "hyperparameters" in state:
        saved = state["hyperparameters"]
        return saved.get("optimizer"), saved.get("base_lr"), saved.get("weight_decay")
    groups = state["optimizer"].get("param_groups") or [{}]
    name = next((name for name, option in (("lars", "trust_coefficient"), ("adamw", "betas"), ("sgd", "nesterov"))
                 if option in groups[0]), None)
    peaks = state.get("scheduler", {}).get("base_lrs") or [None]
    base_lr = None if peaks[0] is None else peaks[0] * 256 / batch_size
    return name, base_lr, max((group.get("weight_decay", 0.0) for group in groups), default=None)


def _same_hyperparameters(saved: tuple[str | None, float | None, float | None],
                          hyper: ResolvedHyperparameters) -> bool:
    name, base_lr, weight_decay = saved
    return (name == hyper.optimizer and base_lr is not None and weight_decay is not None
            and math.isclose(base_lr, hyper.base_lr, rel_tol=1e-9)
            and math.isclose(weight_decay, hyper.weight_decay, rel_tol=1e-9, abs_tol=1e-15))


def _check_resumable(state: dict, config: PretrainConfig, image_size: int, resume: str | Path,
                     hyper: ResolvedHyperparameters) -> None:
    """A file that is not a pretraining checkpoint, or one made with other settings (which would restore a state
    that means something else), is refused with what it is or which setting differs."""
    if not {"model", "optimizer", "scheduler", "step", "config"} <= set(state):
        if "backbone" in state:
            what = "an exported backbone (backbone.pt: the encoder's weights alone)"
        elif state and all(isinstance(value, torch.Tensor) for value in state.values()):
            what = "a state dict of weights (such as selfsup export's or torchvision's)"
        else:
            what = f"not a selfsup pretraining checkpoint (it has {', '.join(sorted(map(str, state))[:6])})"
        raise ValueError(f"cannot resume from {resume}: it is {what}; resume takes a checkpoint of a run, "
                         "OUT/checkpoints/step_*.pt, or --resume auto")
    changes = changed_settings(state["config"], config)
    trained_with = _saved_hyperparameters(state, config.batch_size)
    if _same_hyperparameters(trained_with, hyper):  # e.g. 'auto' then, and what it chose named now: the same run
        changes = [change for change in changes if change[0] not in ("optimizer", "base_lr", "weight_decay")]
    if state.get("image_size") != image_size:
        changes.append(("image_size", state.get("image_size"), image_size))
    if changes:
        name, saved, current = changes[0]
        more = f" (and {', '.join(c[0] for c in changes[1:])})" if len(changes) > 1 else ""
        raise ValueError(f"cannot resume from {resume}: it was trained with {name}={saved!r}, this run has "
                         f"{name}={current!r}{more}")
    name, base_lr, weight_decay = trained_with
    if name is not None and name != hyper.optimizer:
        flags = f"--optimizer {name}" + (f" --base-lr {base_lr:g} --weight-decay {weight_decay:g}"
                                         if base_lr is not None and weight_decay is not None else "")
        raise ValueError(f"cannot resume from {resume}: it was trained with the {name} optimizer, and this run's "
                         f"optimizer={config.optimizer!r} is {hyper.optimizer} ({hyper.reason}); give {flags} to "
                         "continue it")


def train(config: PretrainConfig, data: ImageData, device: torch.device, resume: str | Path | None = None,
          log: Log = print, epoch_end: Callable[[int, TrainedRun], dict] | None = None,
          command: str | None = None) -> TrainedRun:
    """Train ``config.method`` on ``data``; ``resume`` a checkpoint file, or "auto" for the newest in out/.

    ``epoch_end(epoch, run)``, called on the main process after each epoch (counted from 1), returns figures for
    that epoch's row of the metrics (the pipeline's kNN check). ``command``, the command line that started the
    run (default: this process's), is recorded in OUT/config.json.
    """
    world, is_main = dist.world_size(), dist.is_main_process()
    log = log if is_main else (lambda *_: None)
    check_batch_size(config, len(data), world)
    out_dir = Path(config.out)
    checkpoint_dir = out_dir / "checkpoints"
    image_size = auto_image_size(config, data)
    mean, std = channel_stats(data)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    backbone = build_backbone(config, image_size)
    method = build_method(config, backbone)
    if world > 1 and config.sync_batchnorm:
        method = dist.convert_sync_batchnorm(method, device)  # online and target networks alike
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    method = method.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
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
    warmup_steps = capped_warmup_steps(config.warmup_epochs, steps_per_epoch, total_steps)
    hyper = resolve(config)
    peak_lr = scaled_learning_rate(hyper.base_lr, config.batch_size)
    optimizer = build_optimizer(hyper.optimizer, method.learnable_parameters(), peak_lr, hyper.weight_decay,
                                lars_trust_coefficient=config.lars_trust_coefficient, lars_clip=config.lars_clip)
    training_step = TrainingStep(method, optimizer, build_scheduler(optimizer, total_steps, warmup_steps),
                                 total_steps, steps_per_epoch, model=model, precision=config.precision,
                                 grad_clip=config.grad_clip,
                                 channels_last=channels_last, on_nonfinite=config.on_nonfinite,
                                 device_type=device.type)
    probe = probe_optimizer = None
    if config.online_probe and data.labels is not None and data.num_classes >= 2:
        # BatchNorm without affine standardises the features, whose scale drifts while the backbone learns.
        probe = nn.Sequential(nn.BatchNorm1d(backbone.feature_dim, affine=False),
                              nn.Linear(backbone.feature_dim, data.num_classes)).to(device)
        if world > 1 and config.sync_batchnorm:
            probe = dist.convert_sync_batchnorm(probe, device)  # the global batch's statistics, as one process
        probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=0.0)

    run = TrainedRun(out_dir=out_dir, method=method, backbone=backbone, steps=0, checkpoint=None, device=device,
                     image_size=image_size, mean=mean, std=std, embedding_dim=None)
    step = 0
    if resume is not None and str(resume) == "auto":
        found = list_checkpoints(checkpoint_dir)
        resume = dist.broadcast_object(found[-1] if found else None)  # every rank loads rank 0's pick
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        _check_resumable(state, config, image_size, resume, hyper)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        training_step.scheduler.load_state_dict(state["scheduler"])
        training_step.scaler.load_state_dict(state["scaler"])
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
                f"). {likely_causes(method)}" + last_good_checkpoint())
        if not is_main:
            return None
        state = {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": training_step.scheduler.state_dict(), "scaler": training_step.scaler.state_dict(),
                 "step": at_step, "epoch": at_step // steps_per_epoch, "config": to_dict(config),
                 "image_size": image_size, "mean": list(mean), "std": list(std), "rng": _rng_state(),
                 "backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone),
                 "classes": data.classes or [],
                 "hyperparameters": {"optimizer": hyper.optimizer, "base_lr": hyper.base_lr,
                                     "weight_decay": hyper.weight_decay}}
        if probe is not None:
            state["probe"] = probe.state_dict()
            state["probe_optimizer"] = probe_optimizer.state_dict()
        path = checkpoint_path(checkpoint_dir, at_step)
        save_checkpoint(state, path)
        prune_checkpoints(checkpoint_dir, config.keep_checkpoints)
        return path

    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=step if resume is not None else None,
                         tensorboard=config.tensorboard) \
        if is_main else None
    if is_main:
        from selfsup.provenance import run_record

        write_json(out_dir / "config.json", {**to_dict(config), "run": run_record(
            command, mean, std, channel_stats_source(data), resumed_from=str(resume) if resume else None,
            optimizer=dataclasses.asdict(hyper))})
        if data.skipped:
            atomic_write_text(out_dir / "skipped_images.txt", "".join(f"{p}\t{why}\n" for p, why in data.skipped))
    if crop_size > image_size:
        log(f"warning: crop_size {crop_size} is larger than image_size {image_size}: the views are upsampled "
            "crops, bigger than the images evaluated")
    crops = f" (views of {crop_size} px)" if crop_size != image_size else ""
    log(f"{config.method} on {data.name}: {len(data)} images at {image_size} px{crops}, {world} process(es), "
        f"{steps_per_epoch} steps/epoch x {config.epochs} epochs, {hyper.optimizer} lr {peak_lr:.4g} "
        f"(base {hyper.base_lr:g} per 256) weight decay {hyper.weight_decay:g} ({hyper.reason})")
    if warmup_steps < round(config.warmup_epochs * steps_per_epoch):
        log(f"warmup: {warmup_steps} steps ({warmup_steps / steps_per_epoch:.3g} epochs, a tenth of the run's "
            f"{total_steps}) instead of the {config.warmup_epochs:g} epochs set, so that the learning rate decays")

    model.train()
    last_checkpoint = None
    embedding_dim = None
    window_images, window_start = 0, time.perf_counter()
    probe_correct = probe_seen = skipped_steps = 0
    warned_collapse = False
    progress_bar = None
    with _StopSignals() as stop:
        start_epoch, start_batch = divmod(step, steps_per_epoch)
        for epoch in range(start_epoch, config.epochs):
            if step >= last_step:
                break
            first_batch = start_batch if epoch == start_epoch else 0
            if is_main and config.progress:
                if progress_bar is None:  # one bar for the whole run, so that its ETA is the run's
                    from tqdm import tqdm
                    progress_bar = tqdm(total=last_step, initial=step, unit="step", dynamic_ncols=True)
                    log = _above_bar(log)
                progress_bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            for *views, labels in batches.epoch(epoch, first_batch):
                try:
                    result = training_step(views, step, epoch)
                except NonFiniteLossError as error:
                    raise NonFiniteLossError(f"{error}{last_good_checkpoint()}") from None
                step += 1
                if result.skipped:
                    log(f"skipping step: {result.message}")
                    skipped_steps += 1
                    if step >= last_step:
                        break
                    continue
                output = result.output
                embedding_dim = output.embeddings[0].shape[-1]
                if probe is not None and labels is not None:
                    logits = probe(output.features.float())
                    probe_loss = nn.functional.cross_entropy(logits, labels)
                    probe_optimizer.zero_grad(set_to_none=True)
                    probe_loss.backward()
                    dist.all_reduce_gradients_(probe.parameters())  # the same probe on every rank
                    probe_optimizer.step()
                    probe_correct += int((logits.argmax(1) == labels).sum())
                    probe_seen += len(labels)

                window_images += views[0].shape[0] * world
                if progress_bar is not None:
                    progress_bar.update(1)
                if step % config.log_every == 0 or step == last_step:
                    elapsed = time.perf_counter() - window_start
                    row = {"step": step, "epoch": epoch + 1, **training_step.monitors(result),
                           "images_per_s": round(window_images / max(elapsed, 1e-9), 1)}
                    warning = collapse_warning(row, dim=embedding_dim)
                    if warning and not warned_collapse:
                        log(f"warning at step {step}: {warning}")
                        warned_collapse = True
                    if metrics is not None:
                        metrics.write(row)
                    if progress_bar is not None:
                        momentum = {"m": f"{row['momentum']:.4f}"} if "momentum" in row else {}
                        progress_bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}", **momentum,
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
            epoch_row = {"step": step, "epoch": epoch + 1}
            if probe_seen:
                probe_correct, probe_seen = dist.all_reduce_mean(
                    torch.tensor([probe_correct, probe_seen], dtype=torch.float64, device=device)).tolist()
                epoch_row["online_probe_top1"] = round(100.0 * probe_correct / probe_seen, 2)
                probe_correct = probe_seen = 0
            if epoch_end is not None and is_main:
                epoch_row.update(epoch_end(epoch + 1, run))
            if is_main and len(epoch_row) > 2:
                metrics.write(epoch_row)
                log("  ".join(f"{k} {v}" for k, v in epoch_row.items()))
            last_checkpoint = save(step) or last_checkpoint
            dist.barrier()
    if progress_bar is not None:
        progress_bar.close()
    if metrics is not None:
        metrics.close()
    if skipped_steps:
        log(f"{skipped_steps} step(s) skipped for a non-finite loss")
    run.steps, run.checkpoint, run.embedding_dim = step, last_checkpoint, embedding_dim
    return run
