"""A pretrained backbone for a downstream task: ``selfsup.load_backbone(path)``, then a linear head trained on
its frozen features, and ``selfsup.evaluate`` (kNN and linear probe, selfsup eval's protocol).

    python examples/pretrain_from_python.py --out runs/pretrain_from_python
    python examples/load_backbone.py --checkpoint runs/pretrain_from_python/backbone.pt

Any selfsup checkpoint works: OUT/backbone.pt, OUT/checkpoints/step_*.pt, or ``selfsup export``'s file. The
downstream task here is the labelled digits (built in, no download). Writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import selfsup
from selfsup.data import load_image_data
from selfsup.eval.features import normalize_uint8
from selfsup.transforms import CIFAR10_MEAN, CIFAR10_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain_from_python/backbone.pt",
                        help="a selfsup checkpoint or backbone.pt")
    parser.add_argument("--head-steps", type=int, default=200, help="steps of the linear head's training")
    parser.add_argument("--linear-max-iter", type=int, default=100, help="L-BFGS iterations of selfsup.evaluate")
    parser.add_argument("--out", default="runs/load_backbone", help="folder for result.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    # 1. The backbone: images (B, 3, S, S) -> features (B, feature_dim). Loaded with weights_only=True.
    backbone = selfsup.load_backbone(args.checkpoint)
    backbone.eval()
    print(f"{args.checkpoint}: {backbone.name}, width {backbone.width}, {backbone.feature_dim} features")

    # 2. A downstream task: a linear classifier on the frozen features. Images are sized and normalized as in
    # pretraining: backbone.pt, a plain dict, keeps the image size and the channel statistics beside the weights
    # (selfsup.evaluate reads them itself when given the path).
    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    image_size = saved.get("image_size") or 16  # the digits are 8 px, pretrained at 16
    mean, std = saved.get("mean", CIFAR10_MEAN), saved.get("std", CIFAR10_STD)
    train, test = load_image_data("digits", "train"), load_image_data("digits", "test")
    with torch.no_grad():
        train_features = backbone(normalize_uint8(train.images, image_size, mean, std))
        test_features = backbone(normalize_uint8(test.images, image_size, mean, std))
    head = torch.nn.Linear(backbone.feature_dim, train.num_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    scale = train_features.std(0).clamp_min(1e-6)  # features standardised, for a learning rate that fits any
    shift = train_features.mean(0)
    for _ in range(args.head_steps):
        loss = F.cross_entropy(head((train_features - shift) / scale), train.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = head((test_features - shift) / scale).argmax(1)
    head_top1 = 100.0 * (predictions == test.labels).float().mean().item()
    print(f"linear head (Adam, {args.head_steps} steps): test top-1 {head_top1:.2f}")

    # 3. Or selfsup's protocol in one call: weighted kNN and an L-BFGS linear probe (a module or a path).
    table = selfsup.evaluate(backbone, "digits", image_size=image_size, mean=mean, std=std,
                             linear_max_iter=args.linear_max_iter)
    print(f"selfsup.evaluate: kNN top-1 {table['knn_top1']:.2f}, linear top-1 {table['linear_top1']:.2f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(args.checkpoint), "feature_dim": backbone.feature_dim, "head_top1": head_top1,
              "knn_top1": table["knn_top1"], "linear_top1": table["linear_top1"]}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
