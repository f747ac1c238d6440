"""End-to-end CIFAR-10 pretraining throughput on CPU, data loading included: selfsup vs lightly.

selfsup   pretraining's parts on a folder of CIFAR-10 JPEGs: the images are decoded once into a uint8
          tensor (a one-time cost, timed and reported on its own) and each batch is augmented on the
          device by ``BatchedViews``; then ``selfsup.train.step.TrainingStep`` (method, loss, LARS,
          schedule, EMA), the step ``selfsup pretrain`` runs.
lightly   the equivalent script in lightly's style: torchvision ``ImageFolder`` with lightly's
          ``SimCLRTransform`` / ``BYOLTransform`` (same recipe: blur off at 32 px) in a ``DataLoader``
          with worker processes that decode and augment every image every epoch; lightly's heads,
          ``NTXentLoss`` / ``NegativeCosineSimilarity``, ``update_momentum`` and cosine momentum
          schedule; the same backbone (``selfsup.models.ResNetBackbone``, CIFAR stem), the same batch,
          the same optimizer class (``selfsup.train.optim.LARS``, same parameter groups) and schedule.

Both run ``--steps`` steps on the same subset of CIFAR-10's training images, fp32. Each run is its own
subprocess (so peak RSS is per configuration); selfsup and lightly alternate, repeat after repeat, and
the table gives medians. Two throughputs: wall-clock images per second of the steps after the first
(the first, with oneDNN's set-up and lightly's worker start, is reported apart; a step's time includes
getting its batch: augmentation for selfsup, waiting on the workers for lightly), and CPU milliseconds
per image over all steps, training process and workers together, which unlike wall time does not
depend on the CPU share each process gets on a shared machine.

    python benchmarks/epoch.py --no-lightly                       # selfsup only
    /tmp/benchenv/bin/python benchmarks/epoch.py --threads 1      # with lightly (benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfsup.data.datasets import default_datasets_dir

METHODS = ("simclr", "byol")


def make_subset(count: int, out: Path) -> Path:
    """A folder of symlinks to the first ``count / 10`` training JPEGs of each CIFAR-10 class."""
    source = default_datasets_dir() / "cifar10" / "train"
    if not source.is_dir():
        raise SystemExit(f"CIFAR-10 JPEGs not found at {source} (set SELFSUP_DATASETS)")
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = -(-count // len(classes))
    for class_dir in classes:
        (out / class_dir.name).mkdir(parents=True)
        for file in sorted(class_dir.glob("*.jpg"))[:per_class]:
            (out / class_dir.name / file.name).symlink_to(file.resolve())
    return out


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class StepClock:
    """Wall and CPU time at each request for a batch and at the end of the last step: step k runs from
    request k to request k + 1 (getting its batch, then the step), the last to ``end()``."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def result(self, workers_cpu_seconds: float = 0.0) -> dict:
        return {"step_seconds": [b - a for a, b in zip(self.wall, self.wall[1:])],
                "main_cpu_seconds": self.cpu[-1] - self.cpu[0], "workers_cpu_seconds": workers_cpu_seconds}


def run_selfsup(args: argparse.Namespace) -> dict:
    from selfsup.config import PretrainConfig, resolve
    from selfsup.data.datasets import load_image_data
    from selfsup.schedules import scaled_learning_rate
    from selfsup.train.build import auto_image_size, build_backbone, build_batches, build_method, channel_stats
    from selfsup.train.optim import build_optimizer, build_scheduler
    from selfsup.train.step import TrainingStep

    # The parts pretrain() puts together, in its order: the decode into memory, the batches of two views
    # augmented on the device, and the one training step (method, loss, LARS, schedule, EMA).
    config = PretrainConfig(method=args.method, data=args.data, backbone="resnet18", width=args.width,
                            cifar_stem=True, batch_size=args.batch_size, optimizer="lars", epochs=args.epochs,
                            online_probe=False, progress=False, device="cpu", num_workers=args.workers)
    start = time.perf_counter()
    data = load_image_data(config.data, "train", progress=False)
    decode_seconds = time.perf_counter() - start
    image_size = auto_image_size(config, data)
    mean, std = channel_stats(data)
    torch.manual_seed(config.seed)
    method = build_method(config, build_backbone(config, image_size)).train()
    batches = build_batches(config, data, image_size, mean, std, torch.device("cpu"))
    total_steps = config.epochs * len(batches)
    hyper = resolve(config)
    optimizer = build_optimizer("lars", method.learnable_parameters(),
                                scaled_learning_rate(hyper.base_lr, config.batch_size), hyper.weight_decay)
    step = TrainingStep(method, optimizer, build_scheduler(optimizer, total_steps, min(10 * len(batches),
                                                                                      total_steps)), total_steps,
                        len(batches))
    clock = StepClock()
    clock.tick()
    for index, (*views, _) in enumerate(batches.epoch(0)):  # request k to request k + 1
        step(views, index)
        clock.tick()
        if index + 1 >= args.steps:
            break
    if len(clock.wall) != args.steps + 1:
        raise RuntimeError(f"expected {args.steps + 1} instants, got {len(clock.wall)}: too few batches?")
    return {**clock.result(), "decode_seconds": decode_seconds,
            "peak_rss_mib": peak_rss_mib(resource.RUSAGE_SELF), "workers_peak_rss_mib": 0.0}


def run_lightly(args: argparse.Namespace) -> dict:
    import copy

    from augmentation import lightly_pipelines  # benchmarks/augmentation.py, next to this script
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from selfsup.config import PretrainConfig, resolve
    from selfsup.models import ResNetBackbone
    from selfsup.schedules import scaled_learning_rate, warmup_cosine
    from selfsup.train.optim import LARS, parameter_groups
    from selfsup.transforms import CIFAR10_MEAN, CIFAR10_STD

    torch.manual_seed(0)
    dataset = ImageFolder(args.data, transform=lightly_pipelines(args.method, 32, CIFAR10_MEAN, CIFAR10_STD))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers)
    encoder = ResNetBackbone("resnet18", cifar_stem=True, width=args.width)
    if args.method == "simclr":
        model = nn.ModuleDict({"backbone": encoder, "head": SimCLRProjectionHead(encoder.feature_dim, 2048, 128)})
        criterion = NTXentLoss(temperature=0.5)
    else:
        model = nn.ModuleDict({"backbone": encoder, "head": BYOLProjectionHead(encoder.feature_dim, 4096, 256),
                               "predictor": BYOLPredictionHead(256, 4096, 256)})
        target = nn.ModuleDict({"backbone": copy.deepcopy(encoder), "head": copy.deepcopy(model["head"])})
        deactivate_requires_grad(target)
        criterion = NegativeCosineSimilarity()
    # selfsup's own hyperparameters, so that only the pipeline differs.
    hp = resolve(PretrainConfig(method=args.method))
    total_steps = args.epochs * len(loader)
    warmup_steps = min(10 * len(loader), total_steps)
    optimizer = LARS(parameter_groups(model, hp.weight_decay), lr=scaled_learning_rate(hp.base_lr, args.batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps))
    model.train()

    clock = StepClock()
    step = 0
    clock.tick()
    for (view1, view2), _ in loader:  # one epoch of exactly --steps batches
        if args.method == "simclr":
            z = model["head"](model["backbone"](torch.cat([view1, view2])))
            loss = criterion(*z.chunk(2))
        else:
            momentum = cosine_schedule(step, total_steps, 0.996, 1.0)
            update_momentum(model["backbone"], target["backbone"], m=momentum)
            update_momentum(model["head"], target["head"], m=momentum)
            p1, p2 = (model["predictor"](model["head"](model["backbone"](v))) for v in (view1, view2))
            with torch.no_grad():
                z1, z2 = (target["head"](target["backbone"](v)) for v in (view1, view2))
            loss = 0.5 * (criterion(p1, z2) + criterion(p2, z1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        clock.tick()
        if step >= args.steps:
            break
    del loader
    gc.collect()  # joins the workers, so that RUSAGE_CHILDREN counts them
    return {**clock.result(cpu_seconds(resource.RUSAGE_CHILDREN)), "decode_seconds": 0.0,
            "peak_rss_mib": peak_rss_mib(resource.RUSAGE_SELF),
            "workers_peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN)}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    result = (run_selfsup if args.child == "selfsup" else run_lightly)(args)
    print("RESULT " + json.dumps(result))


def launch(pipeline: str, method: str, data: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", pipeline, "--method", method,
               "--data", str(data), "--width", str(args.width), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--workers", str(args.workers)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{pipeline} {method} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def steady_speed(result: dict, batch_size: int) -> float:
    """Images per second of the steps after the first."""
    return batch_size * (len(result["step_seconds"]) - 1) / sum(result["step_seconds"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="steps of each run (the first is set apart)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs the schedules span (not run)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--workers", type=int, default=2, help="lightly's DataLoader worker processes")
    parser.add_argument("--no-lightly", action="store_true")
    parser.add_argument("--child", choices=["selfsup", "lightly"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is set apart)")
    if args.child:
        child(args)
        return

    lightly_version = None
    if not args.no_lightly:
        try:
            import lightly
            lightly_version = lightly.__version__
        except ImportError:
            print("lightly is not installed: its runs are skipped (see benchmarks/README.md, Augmentation)")
    pipelines = ["selfsup"] + (["lightly"] if lightly_version else [])
    images = args.batch_size * args.steps  # one epoch: lightly's workers make no batch that is not used
    results: dict[tuple[str, str], list[dict]] = {(m, p): [] for m in args.methods for p in pipelines}
    with tempfile.TemporaryDirectory() as folder:
        data = make_subset(images, Path(folder) / "cifar10-subset")
        for repeat in range(args.repeats):
            for method in args.methods:
                for pipeline in pipelines:
                    result = launch(pipeline, method, data, args)
                    results[(method, pipeline)].append(result)
                    print(f"repeat {repeat + 1}: {method} {pipeline}: "
                          f"{steady_speed(result, args.batch_size):.1f} images/s", flush=True)

    rows, figures, ratios = [], {}, {}
    for (method, pipeline), runs in results.items():
        speed = statistics.median(steady_speed(r, args.batch_size) for r in runs)
        cpu_ms = statistics.median(1000 * (r["main_cpu_seconds"] + r["workers_cpu_seconds"]) / images
                                   for r in runs)
        first = statistics.median(r["step_seconds"][0] for r in runs)
        decode = statistics.median(r["decode_seconds"] for r in runs)
        rss = max(r["peak_rss_mib"] for r in runs)
        workers_rss = max(r["workers_peak_rss_mib"] for r in runs)
        rows.append((method, pipeline, speed, cpu_ms, first, decode, rss, workers_rss))
        key = f"{method}_{pipeline}"
        main_cpu_ms = statistics.median(1000 * r["main_cpu_seconds"] / images for r in runs)
        figures.update({f"{key}_images_per_s": round(speed, 2), f"{key}_cpu_ms_per_image": round(cpu_ms, 2),
                        f"{key}_main_process_cpu_ms_per_image": round(main_cpu_ms, 2),
                        f"{key}_first_step_s": round(first, 2), f"{key}_decode_s": round(decode, 2),
                        f"{key}_peak_rss_mib": round(rss), f"{key}_workers_peak_rss_mib": round(workers_rss)})
    by_key = {(m, p): (speed, cpu_ms) for m, p, speed, cpu_ms, *_ in rows}
    if lightly_version:
        for method in args.methods:
            (speed, cpu_ms), (lightly_speed, lightly_cpu_ms) = by_key[(method, "selfsup")], by_key[(method, "lightly")]
            ratios[f"{method}_selfsup_vs_lightly_images_per_s"] = round(speed / lightly_speed, 3)
            ratios[f"{method}_selfsup_vs_lightly_images_per_cpu_s"] = round(lightly_cpu_ms / cpu_ms, 3)

    print(f"\nCIFAR-10 pretraining, ResNet-18 CIFAR stem (width {args.width}), batch {args.batch_size}, LARS, fp32, "
          f"{args.steps} steps on {images} images, {args.threads} training thread(s), lightly with "
          f"{args.workers} workers; medians of {args.repeats} (torch {torch.__version__}, lightly "
          f"{lightly_version}, {platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"{'method':<7} {'pipeline':<8} {'images/s':>9} {'CPU ms/img':>11} {'first step s':>13} "
          f"{'decode s':>9} {'peak RSS MiB':>13} {'workers MiB':>12}")
    for method, pipeline, speed, cpu_ms, first, decode, rss, workers_rss in rows:
        print(f"{method:<7} {pipeline:<8} {speed:>9.2f} {cpu_ms:>11.1f} {first:>13.2f} {decode:>9.2f} "
              f"{rss:>13.0f} {workers_rss:>12.0f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}x")
    print(f"(images/s: wall clock, steps 2-{args.steps}. CPU ms/img: CPU time of the training process and its "
          "workers over all steps, per image: unlike wall time, it does not depend on how many processes\n"
          " share the machine. decode s: selfsup's one-time decode of the JPEGs into memory, before the first "
          "step; lightly decodes in its workers, every epoch. workers MiB: the largest worker's peak RSS)")
    print(json.dumps({"benchmark": "epoch", "width": args.width, "batch_size": args.batch_size,
                      "steps": args.steps, "images": images, "threads": args.threads, "workers": args.workers,
                      "repeats": args.repeats, "lightly": lightly_version, "figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    main()
