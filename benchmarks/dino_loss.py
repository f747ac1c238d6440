"""DINO's loss at the paper's sizes, forward and backward, against autograd's and torch's own cross-entropy.

Three ways to spend one DINO step's loss (2 global + 8 local views of N = 128 rows, K = 65,536 prototypes by
default), alternating, repeat after repeat, each on fresh student logits in [-1, 1] (what the head's unit-norm
last layer over its unit bottleneck gives; N(0, 1) logits over 0.04 would underflow exp to subnormals, far slower
than anything a real step computes):

    selfsup          DINOLoss: all 18 pairs of different views (teacher softmax, center update included)
    autograd         the same pairs through autograd's log-softmax (one matrix-vector product per block of views
                     with the teachers' sum, as DINOLoss computed it before its own backward)
    torch CE         torch.nn.functional.cross_entropy(student / 0.1, soft targets): ONE target per view, 10
                     pairs, torch's own fused kernel; a reference for what any softmax cross-entropy over these
                     logits costs, not a DINO loss

    python benchmarks/dino_loss.py [--batch-size 128] [--prototypes 65536] [--local-views 8] [--repeats 5]

Prints seconds (median) and ratios to selfsup's, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main() -> int:
    from selfsup.losses import DINOLoss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128, help="N, rows of each view")
    parser.add_argument("--prototypes", type=int, default=65536, help="K, the head's output size (paper: 65,536)")
    parser.add_argument("--local-views", type=int, default=8, help="local views beside the 2 global ones")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each variant (medians)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, k, views = args.batch_size, args.prototypes, 2 + args.local_views
    generator = torch.Generator().manual_seed(0)
    criterion = DINOLoss(k)  # teacher temperature 0.04, student 0.1

    def cosines(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    def selfsup_loss() -> float:
        student = [cosines(2, n, k).requires_grad_(), cosines(views - 2, n, k).requires_grad_()]
        teacher = [cosines(2, n, k)]
        start = time.perf_counter()
        criterion(student, teacher).backward()
        return time.perf_counter() - start

    def autograd_loss() -> float:
        student = [cosines(2, n, k).requires_grad_(), cosines(views - 2, n, k).requires_grad_()]
        teacher = cosines(2, n, k)
        start = time.perf_counter()
        probabilities = F.softmax((teacher - criterion.center) / 0.04, dim=2).reshape(2, n * k)
        teacher_sum = probabilities.sum(dim=0)
        all_pairs, same_crop = 0.0, 0.0
        for index, block in enumerate(student):
            log_probabilities = F.log_softmax(block / 0.1, dim=2).reshape(block.shape[0], n * k)
            all_pairs = all_pairs + (log_probabilities @ teacher_sum).sum()
            if index == 0:
                same_crop = (log_probabilities * probabilities).sum()
        (-(all_pairs - same_crop) / (n * 2 * (views - 1))).backward()
        return time.perf_counter() - start

    def torch_cross_entropy() -> float:
        student = cosines(views * n, k).requires_grad_()
        targets = F.softmax(cosines(views * n, k) / 0.04, dim=1)
        start = time.perf_counter()
        F.cross_entropy(student / 0.1, targets).backward()
        return time.perf_counter() - start

    variants = {"selfsup": selfsup_loss, "autograd": autograd_loss, "torch CE": torch_cross_entropy}
    for run in variants.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            seconds[name].append(run())
    median = {name: statistics.median(times) for name, times in seconds.items()}
    print(f"DINO loss forward + backward, {views} views x {n} rows x {k} prototypes, {args.threads} threads, "
          f"medians of {args.repeats} (torch {torch.__version__})")
    for name, value in median.items():
        print(f"  {name:<10} {value:8.3f} s   {value / median['selfsup']:6.2f}x selfsup's")
    print(json.dumps({"benchmark": "dino_loss", "batch_size": n, "prototypes": k, "views": views,
                      "threads": args.threads, "seconds": {name: round(v, 4) for name, v in median.items()},
                      "ratios_to_selfsup": {name: round(v / median["selfsup"], 3) for name, v in median.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
