"""Short-run optimizer recipes on held-out data of four kinds: the papers' LARS against SGD (ResNets) or AdamW (ViTs).

For each data kind a held-out split is made from training data only (never a test split):

    cifar10      CIFAR-10 train, 6,000 images drawn with seed 1234: 5,000 to pretrain on, 1,000 held out (32 px)
    fashion      Fashion-MNIST train (Debian's dataset-fashion-mnist), the same counts (28 px)
    digits       scikit-learn's digits, the train split selfsup uses: 80% to pretrain on, 20% held out (8 px)
    pedestrians  photos: Penn-Fudan crops, "person" (each box, squared, two jitters) against "background" (two
                 square crops up to a person's size that overlap no box), split by photo (first 120 sorted / last 50):
                 1,192 / 443 crops at 32 px

Each method (SimCLR, BYOL) pretrains on the first part with each candidate recipe, then its frozen backbone is
scored on the held-out part with the kNN / linear protocol of ``selfsup eval`` (the pretraining part as the
bank and the probe's training set). Everything else is the default recipe's (selfsup/recipes/default.yaml; BYOL
with its paper's heads) with the sizes below; the candidates differ only in optimizer, learning rate (per 256
images) and weight decay: "paper" is LARS at the method's paper rates, "sgd-X" SGD (momentum 0.9) at X with
weight decay 5e-4, "adamw-X" AdamW at X with the decay CANDIDATES gives. The last lines give each method's
mean gain over random init (kNN and linear averaged, over the kinds run): the yardstick the short-run recipes of
optimizer auto were chosen by. --backbone and --backbone-args run the grid with another backbone (a ViT).

    python benchmarks/short_run_recipes.py [--kinds cifar10 fashion digits pedestrians] [--methods simclr byol]
        [--candidates paper sgd-0.06 sgd-0.09 sgd-0.12] [--out /tmp/short-run-recipes]
    python benchmarks/short_run_recipes.py --methods simclr --candidates paper adamw-1.5e-4 adamw-5e-4 adamw-1e-3 \
        --backbone timm:vit_tiny_patch16_224 --backbone-args 'img_size={side},patch_size={quarter}' --tag=-vit

Prints a table (each row against the same backbone at random init) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234

# name -> PretrainConfig overrides; "paper" leaves optimizer, lr and weight decay to the method's paper values.
CANDIDATES = {
    "paper": {"optimizer": "lars"},
    "sgd-0.06": {"optimizer": "sgd", "base_lr": 0.06, "weight_decay": 5e-4},
    "sgd-0.09": {"optimizer": "sgd", "base_lr": 0.09, "weight_decay": 5e-4},
    "sgd-0.12": {"optimizer": "sgd", "base_lr": 0.12, "weight_decay": 5e-4},
    "sgd-0.24": {"optimizer": "sgd", "base_lr": 0.24, "weight_decay": 5e-4},
    # AdamW for transformers: MoCo v3's ViT rate and decay (1.5e-4, 0.1), DeiT's and DINO's rate (5e-4, 0.05), and
    # two and four times that for short runs
    "adamw-1.5e-4": {"optimizer": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.1},
    "adamw-5e-4": {"optimizer": "adamw", "base_lr": 5e-4, "weight_decay": 0.05},
    "adamw-1e-3": {"optimizer": "adamw", "base_lr": 1e-3, "weight_decay": 0.05},
    "adamw-2e-3": {"optimizer": "adamw", "base_lr": 2e-3, "weight_decay": 0.05},
}

# kind -> run sizes: small images and data sets at the default recipe's width, 32 px ones at a CPU recipe's.
SIZES = {
    "cifar10": {"width": 0.125, "epochs": 5, "batch_size": 256},
    "fashion": {"width": 0.125, "epochs": 5, "batch_size": 256},
    "digits": {"width": 0.25, "epochs": 30, "batch_size": 128},
    "pedestrians": {"width": 0.125, "epochs": 30, "batch_size": 128},
}
# The side of each kind's views (the automatic image size: digits' 8 px upsampled to 16), for --backbone-args.
SIDES = {"cifar10": 32, "fashion": 28, "digits": 16, "pedestrians": 32}


def _save(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images.astype(np.uint8), labels=labels.astype(np.int64))


def _split_tensor_data(data, fit: int | None, held: int | None, fraction: float | None):
    """(images NHWC uint8, labels) of a seeded random split of an in-memory ImageData."""
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(SEED)).numpy()
    if fraction is not None:
        fit = int(round(fraction * len(order)))
        held = len(order) - fit
    images = data.images.permute(0, 2, 3, 1).numpy()
    labels = data.labels.numpy()
    parts = order[:fit], order[fit:fit + held]
    return [(images[p], labels[p]) for p in parts]


def _pedestrian_crops(side: int = 32):
    from PIL import Image

    root = ROOT.parent / "shared" / "datasets" / "pennfudan"
    if not (root / "Annotation").is_dir():
        from selfsup.data.datasets import default_datasets_dir
        root = default_datasets_dir() / "pennfudan"
    pattern = re.compile(r"\((\d+), (\d+)\) - \((\d+), (\d+)\)")
    rng = np.random.default_rng(SEED)
    names = sorted(p.stem for p in (root / "PNGImages").glob("*.png"))
    parts = ([], [])
    for index, name in enumerate(names):
        photo = Image.open(root / "PNGImages" / f"{name}.png").convert("RGB")
        width, height = photo.size
        text = (root / "Annotation" / f"{name}.txt").read_text(errors="replace")
        boxes = [tuple(int(v) for v in m.groups()) for line in text.splitlines() if line.startswith("Bounding box")
                 for m in [pattern.search(line)] if m]
        part = parts[0] if index < 120 else parts[1]
        for x0, y0, x1, y1 in boxes:
            size = max(x1 - x0, y1 - y0)
            for _ in range(2):  # a person: its box squared about the centre, jittered by up to a tenth
                cx = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * size
                cy = (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * size
                crop = photo.crop((int(cx - size / 2), int(cy - size / 2), int(cx + size / 2), int(cy + size / 2)))
                part.append((np.asarray(crop.resize((side, side), Image.BICUBIC)), 1))
            for _ in range(2):  # background: a square crop, up to the person's size, that overlaps no box
                for _attempt in range(500):
                    crop_size = int(min(size, width, height) * rng.uniform(0.2, 1.0))
                    left = int(rng.integers(0, width - crop_size + 1))
                    top = int(rng.integers(0, height - crop_size + 1))
                    if all(left + crop_size <= bx0 or left >= bx1 or top + crop_size <= by0 or top >= by1
                           for bx0, by0, bx1, by1 in boxes):
                        crop = photo.crop((left, top, left + crop_size, top + crop_size))
                        part.append((np.asarray(crop.resize((side, side), Image.BICUBIC)), 0))
                        break
    return [(np.stack([image for image, _ in part]), np.array([label for _, label in part])) for part in parts]


def prepare(kind: str, folder: Path) -> tuple[Path, Path]:
    """Write (once) and return the kind's pretraining and held-out .npz files."""
    fit_path, held_path = folder / f"{kind}-fit.npz", folder / f"{kind}-held.npz"
    if fit_path.is_file() and held_path.is_file():
        return fit_path, held_path
    from selfsup.data.datasets import default_datasets_dir, load_image_data
    from selfsup.data.folders import decode_into_memory

    if kind == "cifar10":
        data = load_image_data(str(default_datasets_dir() / "cifar10" / "train"), "train", progress=False)
        splits = _split_tensor_data(decode_into_memory(data), 5000, 1000, None)
    elif kind == "fashion":
        splits = _split_tensor_data(load_image_data("fashion-mnist", "train", progress=False), 5000, 1000, None)
    elif kind == "digits":
        splits = _split_tensor_data(load_image_data("digits", "train", progress=False), None, None, 0.8)
    elif kind == "pedestrians":
        splits = _pedestrian_crops()
    else:
        raise ValueError(kind)
    (fit_images, fit_labels), (held_images, held_labels) = splits
    _save(fit_path, fit_images, fit_labels)
    _save(held_path, held_images, held_labels)
    return fit_path, held_path


def main() -> int:
    from selfsup import evaluate
    from selfsup.config import PretrainConfig
    from selfsup.flags import parse_mapping
    from selfsup.pipeline import pretrain
    from selfsup.settings import from_dict, load_yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--candidates", nargs="+", default=["paper", "sgd-0.06", "sgd-0.09", "sgd-0.12"],
                        choices=list(CANDIDATES))
    parser.add_argument("--epochs", type=int, default=None, help="override every kind's epochs")
    parser.add_argument("--out", default="/tmp/short-run-recipes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default=None, help="a backbone spec (default: the recipe's ResNet-18)")
    parser.add_argument("--backbone-args", default=None,
                        help="the backbone's arguments; {side} and {quarter} stand for the kind's view side and a "
                             "quarter of it, e.g. img_size={side},patch_size={quarter} (a ViT of 16 patches)")
    parser.add_argument("--tag", default="", help="added to the run folders' names (another backbone's runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    default = load_yaml(ROOT / "selfsup" / "recipes" / "default.yaml")
    results = []
    for kind in args.kinds:
        fit_path, held_path = prepare(kind, out / "data")
        baseline = None
        for method in args.methods:
            for candidate in args.candidates:
                values = {key: value for key, value in default.items() if key not in ("method", "method_args")}
                if method == default["method"]:
                    values["method_args"] = default.get("method_args")
                values.update(SIZES[kind], **CANDIDATES[candidate])
                if args.epochs is not None:
                    values["epochs"] = args.epochs
                if args.backbone:
                    values["backbone"] = args.backbone
                if args.backbone_args:
                    side = SIDES[kind]
                    values["backbone_args"] = parse_mapping(args.backbone_args.format(side=side, quarter=side // 4))
                run_dir = out / "runs" / f"{kind}-{method}-{candidate}{args.tag}"
                values.update(method=method, data=str(fit_path), test_data=None, out=str(run_dir), overwrite=True,
                              progress=False, eval_at_end=False, report=False, online_probe=False,
                              tensorboard=False, threads=args.threads)
                config = from_dict(PretrainConfig, values)
                start = time.perf_counter()
                pretrain(config, log=lambda line: None)
                minutes = (time.perf_counter() - start) / 60
                scores = evaluate(run_dir / "backbone.pt", fit_path, held_path, baselines=baseline is None)
                if baseline is None:
                    rows = {row["name"]: row for row in scores["rows"]}
                    baseline = {"random_knn": rows["random init"]["knn_top1"],
                                "random_linear": rows["random init"]["linear_top1"],
                                "pixels_knn": rows["raw pixels"]["knn_top1"],
                                "pixels_linear": rows["raw pixels"]["linear_top1"]}
                row = {"kind": kind, "method": method, "candidate": candidate, "epochs": config.epochs,
                       "minutes": round(minutes, 2), "knn": scores["knn_top1"], "linear": scores["linear_top1"],
                       **baseline}
                row["knn_gain"] = round(row["knn"] - row["random_knn"], 2)
                row["linear_gain"] = round(row["linear"] - row["random_linear"], 2)
                results.append(row)
                print(f"{kind:<12}{method:<8}{candidate:<16}{row['epochs']:>4}{row['minutes']:>7.2f} min"
                      f"  kNN {row['knn']:6.2f} ({row['knn_gain']:+.2f})  linear {row['linear']:6.2f}"
                      f" ({row['linear_gain']:+.2f})   random {row['random_knn']:.2f}/{row['random_linear']:.2f}"
                      f"  pixels {row['pixels_knn']:.2f}/{row['pixels_linear']:.2f}", flush=True)
    # The rule's yardstick: the mean over data kinds of the gain over random init, kNN and linear averaged.
    summary = {}
    for method in args.methods:
        for candidate in args.candidates:
            gains = [(r["knn_gain"] + r["linear_gain"]) / 2 for r in results
                     if r["method"] == method and r["candidate"] == candidate]
            summary[f"{method} {candidate}"] = round(sum(gains) / len(gains), 2)
            print(f"{method:<8}{candidate:<16} mean gain over random init (kNN and linear averaged, {len(gains)} "
                  f"kinds): {summary[f'{method} {candidate}']:+.2f}")
    print(json.dumps({"benchmark": "short_run_recipes", "threads": args.threads, "backbone": args.backbone,
                      "backbone_args": args.backbone_args, "mean_gain": summary,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
