"""Transfer on Penn-Fudan: `selfsup pretrain` on the training photos, then detection and segmentation.

1. Copies the 120 training photos of the 120/50 split (the test photos are never seen), short side
   resized to ``--load-side``, into OUT/pretrain-data (a flat folder of unlabeled images).
2. ``selfsup pretrain`` on that folder (ImageNet stem, ``--image-size`` views; the recipe and overrides
   below), which writes OUT/pretrain/backbone.pt.
3. ``selfsup transfer detect`` and ``selfsup transfer segment`` with their CPU recipes, each fine-tuning the
   pretrained backbone and the same architecture at random initialisation at the same budget.

    python benchmarks/pennfudan_transfer.py [--method simclr] [--epochs 600] [--out runs/bench-pennfudan]

Prints a table and one JSON line with the pretrained / random ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare_photos(data: Path, out: Path, load_side: int) -> int:
    from PIL import Image

    from selfsup.data.annotations import PennFudan

    out.mkdir(parents=True, exist_ok=True)
    train = PennFudan(data, "train")
    for index in range(len(train)):
        path = train.image_path(index)
        target = out / f"{path.stem}.png"
        if target.exists():
            continue
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = load_side / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            image.save(target.with_suffix(".tmp.png"))
        target.with_suffix(".tmp.png").replace(target)
    return len(train)


def run(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> int:
    from selfsup.eval.transfer_cli import default_pennfudan_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="Penn-Fudan folder (default: the shared one)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pennfudan"))
    parser.add_argument("--method", default="simclr", choices=["byol", "simclr"])
    parser.add_argument("--epochs", type=int, default=600, help="pretraining epochs (2 steps each at batch 60)")
    parser.add_argument("--image-size", type=int, default=96, help="side of the pretraining views")
    parser.add_argument("--load-side", type=int, default=128, help="short side of the stored training photos")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--tasks", nargs="+", default=["detect", "segment"], choices=["detect", "segment"])
    args = parser.parse_args()

    data = args.data or default_pennfudan_dir()
    photos = args.out / "pretrain-data"
    count = prepare_photos(data, photos, args.load_side)
    print(f"{count} training photos (short side {args.load_side}) in {photos}")
    pretrain_out = args.out / "pretrain"
    # Square-root learning-rate scaling, 0.075 x sqrt(B), which SimCLR (appendix B.1) found better for short
    # training and small batches; selfsup's base_lr is per 256 images.
    base_lr = 0.075 * args.batch_size ** 0.5 * 256 / args.batch_size
    pretrain_seconds = run([
        sys.executable, "-m", "selfsup.cli", "pretrain", "--method", args.method, "--data", str(photos),
        "--image-size", str(args.image_size), "--cifar-stem", "false", "--width", str(args.width),
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--base-lr", f"{base_lr:.4f}",
        "--temperature", str(args.temperature), "--warmup-epochs", str(max(args.epochs // 20, 1)),
        "--projection-hidden-dim", "512", "--prediction-hidden-dim", "1024",
        "--crop-min-scale", "0.2", "--num-workers", "2", "--no-progress", "--out", str(pretrain_out),
        "--resume", "auto"])
    backbone = pretrain_out / "backbone.pt"
    rows = []
    for task in args.tasks:
        task_out = args.out / f"transfer-{task}"
        seconds = run([sys.executable, "-m", "selfsup.cli", "transfer", task, "--config",
                       str(ROOT / "configs" / f"transfer_{task}_pennfudan_cpu.yaml"), "--checkpoint", str(backbone),
                       "--data", str(data), "--out", str(task_out)])
        summary = json.loads((task_out / "summary.json").read_text())
        for result in summary["results"]:
            rows.append({"task": task, **result})
        print(f"{task}: {seconds:.0f} s")
    metrics = {"detect": ("map_50", "map"), "segment": ("miou", "pixel_accuracy")}
    print(f"\n{'task':<8}{'backbone':<10}" + "".join(f"{m:>16}" for m in ("map_50", "map", "miou", "pixel_acc")))
    for row in rows:
        values = [row.get(m) for m in ("map_50", "map", "miou", "pixel_accuracy")]
        print(f"{row['task']:<8}{row['variant']:<10}" + "".join(f"{v:>16.4f}" if v is not None else f"{'':>16}"
                                                                for v in values))
    ratios = {}
    for task, names in metrics.items():
        by_variant = {row["variant"]: row for row in rows if row["task"] == task}
        if "selfsup" in by_variant and "random" in by_variant:
            for name in names:
                ratios[f"{task}_{name}_pretrained_over_random"] = round(
                    by_variant["selfsup"][name] / max(by_variant["random"][name], 1e-12), 3)
    print(json.dumps({"benchmark": "pennfudan_transfer", "method": args.method,
                      "pretrain_epochs": args.epochs, "pretrain_seconds": round(pretrain_seconds),
                      "results": rows, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
