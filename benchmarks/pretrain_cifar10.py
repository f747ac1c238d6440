"""CIFAR-10 pretraining at a CPU budget: BYOL and SimCLR against random init and raw pixels.

Pretrains each method with its CPU recipe (configs/pretrain_cifar10_{byol,simclr}_cpu.yaml) on the
CIFAR-10 train split, then evaluates on the test split with weighted kNN (k=200, T=0.1) and a linear probe.
The same backbone at random initialisation and raw pixels are evaluated on the same splits.

    python benchmarks/pretrain_cifar10.py [--methods byol simclr] [--epochs N] [--out runs/bench-cifar10]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from selfsup.config import PretrainConfig
    from selfsup.data.datasets import default_datasets_dir
    from selfsup.pipeline import pretrain
    from selfsup.settings import from_dict, load_yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from selfsup.methods import METHODS

    parser.add_argument("--methods", nargs="+", default=["byol", "simclr"], choices=sorted(METHODS),
                        help="methods to run, each with its configs/pretrain_cifar10_METHOD_cpu.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--out", default="runs/bench-cifar10")
    args = parser.parse_args()

    cifar = default_datasets_dir() / "cifar10"
    if not (cifar / "train").is_dir():
        print(f"CIFAR-10 not found at {cifar}; set SELFSUP_DATASETS", file=sys.stderr)
        return 1
    results = []
    for method in args.methods:
        values = load_yaml(ROOT / "configs" / f"pretrain_cifar10_{method.replace('-', '_')}_cpu.yaml")
        values.update(data=str(cifar / "train"), test_data=str(cifar / "test"), out=f"{args.out}/{method}",
                      progress=False)
        if args.epochs is not None:
            values["epochs"] = args.epochs
        config = from_dict(PretrainConfig, values)
        start = time.perf_counter()
        result = pretrain(config)
        seconds = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
        speeds = [row["images_per_s"] for row in metrics if "images_per_s" in row][1:]  # first window warms up
        rows = {row["name"]: row for row in result.table["rows"]}
        results.append({
            "method": method, "epochs": config.epochs, "steps": result.steps, "minutes": round(seconds / 60, 1),
            "images_per_s": round(sorted(speeds)[len(speeds) // 2], 1) if speeds else None,
            "knn_top1": rows["pretrained"]["knn_top1"], "linear_top1": rows["pretrained"]["linear_top1"],
            "random_knn_top1": rows["random init"]["knn_top1"],
            "random_linear_top1": rows["random init"]["linear_top1"],
            "pixels_knn_top1": rows["raw pixels"]["knn_top1"], "pixels_linear_top1": rows["raw pixels"]["linear_top1"],
            "config": dataclasses.asdict(config),
        })
    header = f"{'method':<8}{'epochs':>7}{'min':>7}{'img/s':>8}{'kNN':>8}{'linear':>8}{'rand kNN':>10}" \
             f"{'rand lin':>10}{'px kNN':>8}{'px lin':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['method']:<8}{r['epochs']:>7}{r['minutes']:>7}{r['images_per_s'] or 0:>8}{r['knn_top1']:>8}"
              f"{r['linear_top1']:>8}{r['random_knn_top1']:>10}{r['random_linear_top1']:>10}"
              f"{r['pixels_knn_top1']:>8}{r['pixels_linear_top1']:>8}")
    summary = [{k: v for k, v in r.items() if k != "config"} for r in results]
    for r in summary:
        r["knn_gain_over_random"] = round(r["knn_top1"] - r["random_knn_top1"], 2)
        r["knn_gain_over_pixels"] = round(r["knn_top1"] - r["pixels_knn_top1"], 2)
    print(json.dumps({"benchmark": "pretrain_cifar10", "threads": torch.get_num_threads(), "results": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
