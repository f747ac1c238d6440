"""Pretraining from Python with a config object: ``selfsup.pretrain(PretrainConfig(...))``.

The same run as ``selfsup pretrain`` with the same settings (every flag is a field of PretrainConfig), on the
built-in digits (no download): it trains, writes checkpoints, OUT/backbone.pt and, the digits being labelled,
the kNN / linear table (OUT/eval.json).

    python examples/pretrain_from_python.py --steps 30 --out runs/pretrain_from_python

Then ``python examples/load_backbone.py --checkpoint runs/pretrain_from_python/backbone.pt``.
"""

from __future__ import annotations

import argparse
import json

import selfsup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr", choices=sorted(selfsup.METHODS))
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: all epochs)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 channel-width multiplier")
    parser.add_argument("--out", default="runs/pretrain_from_python", help="the run's folder")
    parser.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    args = parser.parse_args()

    config = selfsup.PretrainConfig(
        method=args.method,
        data="digits",  # or a folder of images, an .npz, "fashion-mnist"
        out=args.out,
        overwrite=args.overwrite,
        width=args.width,
        epochs=args.epochs,
        max_steps=args.steps,
        batch_size=args.batch_size,
        optimizer="sgd",
        warmup_epochs=1,
        linear_max_iter=30,  # a quick linear probe; the CLI's default is 100
        report=False,  # no report.md (figures need matplotlib)
        progress=False,
        # The method's own options, checked against its settings class (here a smaller SimCLR head).
        method_args={"projection_hidden_dim": 256} if args.method == "simclr" else None,
    )
    result = selfsup.pretrain(config)
    print(f"trained {result.steps} steps; backbone: {result.out_dir / 'backbone.pt'}")
    if result.table is not None:
        print(json.dumps({key: result.table[key] for key in ("knn_top1", "linear_top1")}))


if __name__ == "__main__":
    main()
