"""bf16 autocast and channels_last on CPU: faster than fp32 / the default layout, and is the loss the same?

Side by side in one run, selfsup's full training step (method forward, loss, backward, LARS, zero_grad,
BYOL's EMA) from two augmented views in memory, ResNet-18 with the CIFAR stem, in four variants:
fp32, bf16 autocast, fp32 + channels_last, bf16 + channels_last. The variants alternate, step after
step, and the table gives medians.

Accuracy: from the same initial weights and the same views, ``--check-steps`` training steps in each
variant; the table gives the largest relative difference of the loss from fp32's over those steps.

    python benchmarks/cpu_precision.py --threads 1 --width 0.25 --batch-size 32

Whether bf16 can be fast depends on the CPU: native bf16 matrix units are AVX-512 BF16 (Intel Cooper
Lake and later, AMD Zen 4 and later) or AMX (Intel Sapphire Rapids); without them oneDNN converts to
fp32 for the arithmetic, and bf16 only adds conversions. The script prints which of these flags the CPU has.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from step import LR, WEIGHT_DECAY, autocast, backbone, selfsup_step  # benchmarks/step.py, next to this script

from selfsup.methods import BYOL, SimCLR
from selfsup.train.optim import build_optimizer

VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "fp32 channels_last": ("fp32", True),
            "bf16 channels_last": ("bf16", True)}
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")


def cpu_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    return [flag for flag in BF16_FLAGS if flag in flags]


def make_variant(method: str, model: torch.nn.Module, views: tuple[torch.Tensor, torch.Tensor], dtype: str,
                 channels_last: bool):
    """A copy of ``model`` with its optimizer, and its step on ``views`` in the given precision and layout."""
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    optimizer = build_optimizer("lars", model, lr=LR, weight_decay=WEIGHT_DECAY)
    return model, selfsup_step(method, model, *views, dtype, optimizer)


def losses_over_steps(method: str, model: torch.nn.Module, views, dtype: str, channels_last: bool,
                      steps: int) -> list[float]:
    """The loss of ``steps`` training steps from ``model``'s weights, on the same views each step."""
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    optimizer = build_optimizer("lars", model, lr=LR, weight_decay=WEIGHT_DECAY)
    losses = []
    for _ in range(steps):
        with autocast(dtype):
            loss = model(*views).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target(0.996)
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"], choices=["simclr", "byol"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed repeats of each variant")
    parser.add_argument("--check-steps", type=int, default=3, help="training steps of the loss comparison")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="fp32 is always included (the reference)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "fp32" or name in args.variants}
    views = tuple(torch.randn(args.batch_size, 3, args.image_size, args.image_size) for _ in range(2))

    rows, ratios, loss_diffs = [], {}, {}
    for method in args.methods:
        reference = (SimCLR if method == "simclr" else BYOL)(backbone(args.width)).train()
        steps = {name: make_variant(method, reference, views, *settings)[1] for name, settings in variants.items()}
        for step in steps.values():  # warm-up: oneDNN primitives, optimizer state
            step()
        seconds: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.steps):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
        median = {name: statistics.median(times) for name, times in seconds.items()}
        losses = {name: losses_over_steps(method, reference, views, *settings, args.check_steps)
                  for name, settings in variants.items()}
        for name in variants:
            diff = max(abs(a - b) / abs(b) for a, b in zip(losses[name], losses["fp32"]))
            rows.append((method, name, median[name], args.batch_size / median[name],
                         median["fp32"] / median[name], diff))
            key = f"{method}_{name.replace(' ', '_')}"
            ratios[f"{key}_speedup_vs_fp32"] = round(median["fp32"] / median[name], 3)
            loss_diffs[f"{key}_max_relative_loss_diff"] = float(f"{diff:.3g}")

    flags = cpu_flags()
    print(f"\ntraining step on CPU, ResNet-18 CIFAR stem (width {args.width}), {args.image_size} px, batch "
          f"{args.batch_size}, {torch.get_num_threads()} thread(s), medians of {args.steps} (torch "
          f"{torch.__version__}, {platform.machine()}; CPU flags for bf16: {', '.join(flags) or 'none'})")
    print(f"{'method':<7} {'variant':<20} {'s/step':>8} {'images/s':>9} {'speed vs fp32':>14} "
          f"{'max rel. loss diff':>19}")
    for method, name, value, images_per_second, speedup, diff in rows:
        print(f"{method:<7} {name:<20} {value:>8.3f} {images_per_second:>9.1f} {speedup:>13.3f}x {diff:>19.2e}")
    print(f"(loss diff: over {args.check_steps} training steps from the same weights and views, vs fp32)")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (all variants): {peak_rss_mib:.0f} MiB")
    print(json.dumps({"benchmark": "cpu_precision", "batch_size": args.batch_size, "width": args.width,
                      "threads": torch.get_num_threads(), "cpu_bf16_flags": flags, "ratios": ratios,
                      "loss": loss_diffs, "peak_rss_mib": round(peak_rss_mib)}))


if __name__ == "__main__":
    main()
