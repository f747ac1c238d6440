"""Two-view augmentation throughput per CPU core: selfsup's batched augmentation vs its per-image
torchvision v2 pipeline vs lightly's per-image PIL pipeline (SimCLRTransform, BYOLTransform).

All three start from the same decoded PIL images and end with two normalized float views per image:
real CIFAR-10 JPEGs at 32 px; Penn-Fudan photos, center-cropped and resized once to 256 px, at 224 px.
Timings alternate between the pipelines, repeat after repeat, and the table gives medians, so a
noisy machine slows all of them alike. Prints a table and one JSON line.

    python benchmarks/augmentation.py                      # selfsup only
    /tmp/benchenv/bin/python benchmarks/augmentation.py    # with lightly (see benchmarks/README.md)
    /tmp/benchenv/bin/python benchmarks/augmentation.py --sizes 224 --compile-hue   # + compiled hue rotation
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import numpy as np
import torch
from PIL import Image

from selfsup.data.datasets import default_datasets_dir
from selfsup.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchedViews,
    BatchedViewAugment,
    MultiViewTransform,
    view_transform,
)

LIGHTLY_MISSING = (
    "lightly is not installed: the lightly column is skipped. Install it in a separate environment, "
    "never as a dependency of selfsup:\n"
    "  python -m venv --system-site-packages /tmp/benchenv\n"
    "  /tmp/benchenv/bin/pip install --no-deps lightly lightning-utilities\n"
    "  /tmp/benchenv/bin/python benchmarks/augmentation.py"
)


def load_cifar(count: int) -> list[Image.Image]:
    folder = default_datasets_dir() / "cifar10" / "train"
    if not folder.is_dir():
        raise SystemExit(f"CIFAR-10 JPEGs not found at {folder} (set SELFSUP_DATASETS)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[: count // len(classes) + 1]][:count]
    return [Image.open(f).convert("RGB") for f in files]


def load_pennfudan(count: int, side: int) -> list[Image.Image]:
    folder = default_datasets_dir() / "pennfudan" / "PNGImages"
    if not folder.is_dir():
        raise SystemExit(f"Penn-Fudan photos not found at {folder} (set SELFSUP_DATASETS)")
    images = []
    for path in sorted(folder.glob("*.png"))[:count]:
        image = Image.open(path).convert("RGB")
        short = min(image.size)
        left, top = (image.width - short) // 2, (image.height - short) // 2
        images.append(image.crop((left, top, left + short, top + short)).resize((side, side), Image.BILINEAR))
    while len(images) < count:  # fewer photos than asked: repeat them
        images.extend(images[: count - len(images)])
    return images


def lightly_pipelines(method: str, size: int, mean, std):
    """lightly's transforms with the recipe of selfsup's (blur off at <= 64 px, the same statistics)."""
    from lightly.transforms import BYOLTransform, SimCLRTransform
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    normalize = {"mean": list(mean), "std": list(std)}
    small = size <= 64
    if method == "simclr":
        return SimCLRTransform(input_size=size, gaussian_blur=0.0 if small else 0.5, normalize=normalize)
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=size, gaussian_blur=0.0 if small else 1.0,
                                            normalize=normalize),
        view_2_transform=BYOLView2Transform(input_size=size, gaussian_blur=0.0 if small else 0.1,
                                            solarization_prob=0.2, normalize=normalize),
    )


def method_views(method: str, size: int, mean, std):
    """The method's own two view recipes (its paper settings), as pretraining builds them."""
    from selfsup.methods import method_class

    cls = method_class(method)
    return cls.view_recipes(cls.Settings(), size, mean, std, None)


def per_image_runner(transform, images: list[Image.Image]):
    def run() -> None:
        for image in images:
            transform(image)
    return run


def batched_runner(transform: BatchedViews, images: list[Image.Image], batch_size: int):
    def run() -> None:
        # From the same PIL images: the stacking into a uint8 batch is part of the cost.
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.from_numpy(np.stack([np.asarray(image) for image in chunk])).permute(0, 3, 1, 2)
            transform(batch)
    return run


def with_compiled_hue(run):
    """``run`` with the hue rotation of the batched augmentation compiled by ``torch.compile`` into one
    fused kernel (an experiment: the module's own function is swapped in only around the call)."""
    from selfsup.transforms import batched

    compiled = torch.compile(batched._adjust_hue, dynamic=True)

    def wrapped() -> None:
        eager, batched._adjust_hue = batched._adjust_hue, compiled
        try:
            run()
        finally:
            batched._adjust_hue = eager
    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"], choices=["simclr", "byol"])
    parser.add_argument("--images-small", type=int, default=512, help="images per timing at <= 64 px")
    parser.add_argument("--images-large", type=int, default=64, help="images per timing at 224 px")
    parser.add_argument("--batch-size", type=int, default=256, help="batch of the batched augmentation")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: throughput per core)")
    parser.add_argument("--compile-hue", action="store_true",
                        help="also time the batched augmentation with its hue rotation compiled (torch.compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    try:
        import lightly
        lightly_version = lightly.__version__
    except ImportError:
        print(LIGHTLY_MISSING)
        lightly_version = None

    rows, ratios = [], {}
    for size in args.sizes:
        small = size <= 64
        images = load_cifar(args.images_small) if small else load_pennfudan(args.images_large, 256)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if small else (IMAGENET_MEAN, IMAGENET_STD)
        for method in args.methods:
            recipes = method_views(method, size, mean, std)
            runners = {
                "selfsup batched": batched_runner(BatchedViews(*map(BatchedViewAugment, recipes)), images,
                                                  args.batch_size),
                "selfsup per-image v2": per_image_runner(MultiViewTransform(*map(view_transform, recipes)), images),
            }
            if lightly_version:
                runners["lightly per-image PIL"] = per_image_runner(
                    lightly_pipelines(method, size, mean, std), images)
            if args.compile_hue:
                runners["batched, compiled hue"] = with_compiled_hue(batched_runner(
                    BatchedViews(*map(BatchedViewAugment, recipes)), images, args.batch_size))
            for run in runners.values():  # warm-up
                run()
            seconds: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(args.repeats):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    seconds[name].append(time.perf_counter() - start)
            speed = {name: len(images) / statistics.median(times) for name, times in seconds.items()}
            for name, images_per_second in speed.items():
                relative = images_per_second / speed["selfsup batched"]
                rows.append((size, method, name, images_per_second, relative))
            key = f"{method}_{size}px"
            ratios[f"{key}_batched_vs_v2"] = speed["selfsup batched"] / speed["selfsup per-image v2"]
            if lightly_version:
                ratios[f"{key}_batched_vs_lightly"] = (speed["selfsup batched"]
                                                       / speed["lightly per-image PIL"])
            if args.compile_hue:
                ratios[f"{key}_compiled_hue_vs_batched"] = (speed["batched, compiled hue"]
                                                            / speed["selfsup batched"])
                if lightly_version:
                    ratios[f"{key}_compiled_hue_vs_lightly"] = (speed["batched, compiled hue"]
                                                                / speed["lightly per-image PIL"])

    print(f"\ntwo-view augmentation, images/s with torch.set_num_threads({args.threads}) "
          f"(torch {torch.__version__}, lightly {lightly_version}, {platform.machine()})")
    print(f"{'size':>5} {'method':<7} {'pipeline':<22} {'images/s':>10} {'vs batched':>11}")
    for size, method, name, images_per_second, relative in rows:
        print(f"{size:>5} {method:<7} {name:<22} {images_per_second:>10.1f} {relative:>10.3f}x")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_rss_mib:.0f} MiB")
    print(json.dumps({"benchmark": "augmentation", "threads": args.threads, "lightly": lightly_version,
                      "images_per_second": {f"{m}_{s}px_{n.replace(' ', '_')}": round(v, 1)
                                            for s, m, n, v, _ in rows},
                      "ratios": {k: round(v, 3) for k, v in ratios.items()},
                      "peak_rss_mib": round(peak_rss_mib)}))


if __name__ == "__main__":
    main()
