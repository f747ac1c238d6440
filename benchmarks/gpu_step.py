"""The training step on a GPU with what GPU users expect: ResNet-50, 224 px, batch 256, bf16 autocast,
channels_last, optional ``torch.compile``, pinned memory and non-blocking copies, foreach EMA.

Three variants per method, alternating block after block (``--steps`` steps each), medians:

  floor     the networks' own passes on two augmented views already on the device (SimCLR: backbone +
            projector forward and backward on the 2B views; BYOL: online forward + backward of each
            view, target forward of each view under no_grad); no loss, no optimizer.
  step      selfsup's step from the same views: method forward, loss, backward, LARS, zero_grad,
            BYOL's foreach EMA update.
  pipeline  the step from uint8 images in pinned host memory: a non-blocking copy to the device, the
            batched augmentation there (``BatchedViews``, per-image parameters), then the step.

Prints images/s, the ratios to the floor, and peak GPU memory (peak RSS on CPU), then one JSON line.

    python benchmarks/gpu_step.py                        # on a GPU: the configuration above
    python benchmarks/gpu_step.py --compile              # the same with torch.compile of the networks
    python benchmarks/gpu_step.py --device cpu --backbone resnet18 --width 0.125 --image-size 32 \\
        --source-size 36 --batch-size 8 --steps 1 --repeats 1        # smoke check on CPU (tiny)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from selfsup.methods import BYOL, SimCLR
from selfsup.models import ResNetBackbone
from selfsup.train.optim import build_optimizer
from selfsup.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchedViews, BatchedViewAugment

LR, WEIGHT_DECAY, MOMENTUM_EMA = 0.3, 1e-6, 0.996
VARIANTS = ("floor", "step", "pipeline")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_step(method: str, model: nn.Module, views, autocast: Callable) -> Callable[[], None]:
    def simclr() -> None:
        with autocast():
            projections = model.projector(model.backbone(torch.cat(views)))
        projections.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def byol() -> None:
        with autocast():
            predictions = [model.predictor(model.projector(model.backbone(v))) for v in views]
            with torch.no_grad():
                for v in views:
                    model.target_projector(model.target_backbone(v))
        sum(p.float().sum() for p in predictions).backward()
        model.zero_grad(set_to_none=True)

    return simclr if method == "simclr" else byol


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, autocast: Callable):
    def step(view1: torch.Tensor, view2: torch.Tensor) -> None:
        with autocast():
            loss = model(view1, view2).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target(MOMENTUM_EMA)  # BYOL: torch._foreach_mul_ / _foreach_add_ over all tensors

    return step


def pipeline_step(step: Callable, two_views: BatchedViews, host_images: torch.Tensor, batch_size: int,
                  device: torch.device, memory_format: torch.memory_format) -> Callable[[], None]:
    """Images from pinned host memory to the device without blocking, augmented there, then the step."""
    generator = torch.Generator(device=device).manual_seed(0)
    batches = len(host_images) // batch_size
    position = [0]

    def run() -> None:
        start = (position[0] % batches) * batch_size
        position[0] += 1
        images = host_images[start : start + batch_size].to(device, non_blocking=True)
        view1, view2 = two_views(images, generator)
        step(view1.contiguous(memory_format=memory_format), view2.contiguous(memory_format=memory_format))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"], choices=["simclr", "byol"])
    parser.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224, help="side of the views")
    parser.add_argument("--source-size", type=int, default=256, help="side of the stored uint8 images")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (in place)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks of each variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    # Two host batches of uint8 images, pinned so that the copy to the GPU can overlap compute.
    host_images = torch.randint(0, 256, (2 * args.batch_size, 3, args.source_size, args.source_size),
                                dtype=torch.uint8)
    if device.type == "cuda":
        host_images = host_images.pin_memory()
    views = tuple(torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
                  .contiguous(memory_format=memory_format) for _ in range(2))

    rows, ratios, peaks = [], {}, {}
    for method in args.methods:
        backbone = ResNetBackbone(args.backbone, cifar_stem=args.image_size <= 64, width=args.width)
        model = (SimCLR if method == "simclr" else BYOL)(backbone).to(device, memory_format=memory_format).train()
        if args.compile:
            for module in model.children():  # in place: parameter names, and so LARS and EMA, unchanged
                if any(True for _ in module.parameters()):
                    module.compile()
        optimizer = build_optimizer("lars", model, lr=LR, weight_decay=WEIGHT_DECAY)
        step = train_step(model, optimizer, autocast)
        settings = type(model).Settings()
        two_views = BatchedViews(*map(BatchedViewAugment, type(model).view_recipes(
            settings, args.image_size, IMAGENET_MEAN, IMAGENET_STD, None)))
        variants = {"floor": floor_step(method, model, views, autocast),
                    "step": functools.partial(step, *views),
                    "pipeline": pipeline_step(step, two_views.to(device), host_images, args.batch_size, device,
                                              memory_format)}
        for name, run in variants.items():  # warm-up (compilation, cuDNN autotuning); peak memory of each
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.warmup):
                run()
            synchronize(device)
            if device.type == "cuda":
                peaks[f"{method}_{name}"] = torch.cuda.max_memory_allocated(device) / 2**20
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                synchronize(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    run()
                synchronize(device)
                seconds[name].append((time.perf_counter() - start) / args.steps)
        median = {name: statistics.median(times) for name, times in seconds.items()}
        for name in variants:
            rows.append((method, name, median[name], args.batch_size / median[name], median[name] / median["floor"],
                         peaks.get(f"{method}_{name}")))
        ratios[f"{method}_step_vs_floor"] = round(median["step"] / median["floor"], 4)
        ratios[f"{method}_pipeline_vs_floor"] = round(median["pipeline"] / median["floor"], 4)
        del model, optimizer, variants
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n{args.backbone} (width {args.width}), {args.image_size} px views from {args.source_size} px uint8, "
          f"batch {args.batch_size}, {args.dtype}, {'contiguous' if args.no_channels_last else 'channels_last'}, "
          f"compile {'on' if args.compile else 'off'}, medians of {args.repeats} blocks of {args.steps} steps "
          f"on {device} ({name}; torch {torch.__version__})")
    memory_column = "peak GPU MiB" if device.type == "cuda" else ""
    print(f"{'method':<7} {'variant':<9} {'s/step':>9} {'images/s':>9} {'vs floor':>9} {memory_column:>13}")
    for method, variant, value, images_per_second, relative, peak in rows:
        memory = f"{peak:>13.0f}" if peak is not None else ""
        print(f"{method:<7} {variant:<9} {value:>9.4f} {images_per_second:>9.1f} {relative:>8.4f}x {memory}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_rss_mib:.0f} MiB")
    print(json.dumps({"benchmark": "gpu_step", "device": str(device), "device_name": name,
                      "backbone": args.backbone, "width": args.width, "batch_size": args.batch_size,
                      "image_size": args.image_size, "dtype": args.dtype, "channels_last": not args.no_channels_last,
                      "compile": args.compile,
                      "images_per_second": {f"{m}_{v}": round(ips, 1) for m, v, _, ips, _, _ in rows},
                      "ratios": ratios, "peak_gpu_mib": {k: round(v) for k, v in peaks.items()},
                      "peak_rss_mib": round(peak_rss_mib)}))


if __name__ == "__main__":
    main()
