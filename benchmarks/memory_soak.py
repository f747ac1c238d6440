"""Memory over a long run: the process's resident memory (RSS) after every epoch of `pretrain`.

A small in-memory run (the embedded digits, a ResNet-18 at width 1/8, tiny heads, checkpoints every
epoch, online probe on) for 20 epochs per method, one process, one thread. A leak (tensors kept in a
list, graphs kept alive by a logged loss, checkpoints held in memory) shows as RSS rising epoch after
epoch; allocator warm-up shows in epoch 1 only, so growth is measured from epoch 2.

    python benchmarks/memory_soak.py                       # BYOL and SimCLR, 20 epochs each
    python benchmarks/memory_soak.py --epochs 5 --methods byol   # a quick look

Prints RSS per epoch side by side, the growth from epoch 2 to the last (MiB and ratio) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import torch

from selfsup.config import PretrainConfig
from selfsup.pipeline import pretrain

EPOCH_ROW = re.compile(r"^step (\d+)\s+epoch (\d+)")


def rss_mib() -> float:
    """Resident memory of this process now (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def soak(method: str, epochs: int, out: Path) -> list[float]:
    """RSS after each epoch of one run (read when the loop logs the epoch's row)."""
    per_epoch: list[float] = []

    def log(message: str) -> None:
        if EPOCH_ROW.match(message):
            per_epoch.append(rss_mib())

    heads = {"projection_hidden_dim": 128, "projection_dim": 64, **({"prediction_hidden_dim": 128}
                                                                    if method == "byol" else {})}
    config = PretrainConfig(method=method, method_args=heads, data="digits", out=str(out), width=0.125,
                            batch_size=64, epochs=epochs,
                            warmup_epochs=1.0, eval_at_end=False, report=False, progress=False, log_every=5,
                            num_workers=0, keep_checkpoints=2, device="cpu")
    pretrain(config, log=log)
    if len(per_epoch) != epochs:
        raise RuntimeError(f"expected one epoch row per epoch, got {len(per_epoch)} for {epochs} epochs")
    return per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["byol", "simclr"], choices=["byol", "simclr"])
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (growth is measured from epoch 2)")
    torch.set_num_threads(1)

    results: dict[str, list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            results[method] = soak(method, args.epochs, Path(scratch) / method)
    seconds = time.perf_counter() - started

    print("RSS (MiB) after each epoch, 1,347 digits at 16 px, batch 64 (21 steps an epoch)")
    print("epoch  " + "  ".join(f"{m:>8}" for m in results))
    for epoch in range(args.epochs):
        print(f"{epoch + 1:5d}  " + "  ".join(f"{results[m][epoch]:8.1f}" for m in results))
    summary = {}
    for method, values in results.items():
        growth = values[-1] - values[1]
        summary[method] = {"rss_epoch2_mib": round(values[1], 1), "rss_last_mib": round(values[-1], 1),
                           "growth_mib": round(growth, 1), "ratio_last_to_epoch2": round(values[-1] / values[1], 4),
                           "max_mib": round(max(values), 1)}
        print(f"{method}: epoch 2 -> {args.epochs}: {growth:+.1f} MiB (x{values[-1] / values[1]:.4f}), "
              f"peak {max(values):.1f} MiB")
    print(json.dumps({"benchmark": "memory_soak", "epochs": args.epochs, "results": summary,
                      "rss_mib": {m: [round(v, 1) for v in values] for m, values in results.items()},
                      "seconds": round(seconds, 1), "torch": torch.__version__,
                      "python": platform.python_version(), "machine": platform.machine()}))


if __name__ == "__main__":
    main()
