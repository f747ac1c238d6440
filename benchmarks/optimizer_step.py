"""selfsup's LARS and SGD steps against torch.optim.SGD (foreach) on the same parameters, side by side.

The default shapes are Barlow Twins' / VICReg's paper projector on a ResNet-18 (512 -> 8192 -> 8192 -> 8192,
138 M parameters), whose optimizer step is most of what those methods' training steps spend beyond the
networks' passes (benchmarks/README.md). Every optimizer steps the same gradients; the figure is the best of
``--repeats`` steps after one warm-up step.

    python benchmarks/optimizer_step.py [--width 8192] [--input 512] [--threads 2] [--repeats 5]

Prints milliseconds per step, each optimizer's ratio to torch.optim.SGD(foreach=True), and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main() -> int:
    from selfsup.train.optim import build_optimizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8192, help="the projector's hidden and output size")
    parser.add_argument("--input", type=int, default=512, help="the backbone's feature size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(args.width, args.input), (args.width,), (args.width, args.width), (args.width,),
              (args.width, args.width)]
    generator = torch.Generator().manual_seed(0)

    def parameters() -> list[torch.nn.Parameter]:
        made = [torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.01) for shape in shapes]
        for parameter in made:
            parameter.grad = torch.randn(parameter.shape, generator=generator) * 0.01
        return made

    builders = {
        "torch SGD (foreach)": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-6, foreach=True),
        "selfsup SGD": lambda ps: build_optimizer("sgd", [{"params": ps}], lr=0.1, weight_decay=1e-6),
        "selfsup LARS": lambda ps: build_optimizer("lars", [{"params": ps}], lr=0.1, weight_decay=1e-6),
    }
    seconds = {}
    for name, build in builders.items():
        optimizer = build(parameters())
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        seconds[name] = min(times[1:])  # the first step creates the momentum buffers
    reference = seconds["torch SGD (foreach)"]
    count = sum(torch.Size(shape).numel() for shape in shapes)
    print(f"optimizer step over {count / 1e6:.1f} M parameters, {args.threads} threads, best of {args.repeats}")
    for name, value in seconds.items():
        print(f"{name:<22}{value * 1000:9.1f} ms   {value / reference:6.3f}x torch SGD")
    print(json.dumps({"benchmark": "optimizer_step", "parameters": count, "threads": args.threads,
                      "seconds": {k: round(v, 5) for k, v in seconds.items()},
                      "ratios_to_torch_sgd": {k: round(v / reference, 4) for k, v in seconds.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
