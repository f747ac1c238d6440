"""The compute floor of a training step, and how close selfsup's (and lightly's) full step comes to it.

From an augmented batch in memory (two views), on CPU, ResNet-18 with the CIFAR stem, 32 px:

  floor    the backbone's own cost for the views, heads included: SimCLR = forward + backward of
           backbone and projector on both views (one pass over the 2B views, as the method does);
           BYOL = online forward + backward (backbone, projector, predictor) of each view + the
           target's forward of each view under no_grad. Nothing else: no loss, no optimizer.
           SimSiam: online forward + backward (backbone, projector, predictor) of each view; MoCo v2: the
           query's forward + backward of view 1 and the key encoder's forward of view 2; MoCo v3: as BYOL;
           Barlow Twins and VICReg: forward + backward of backbone and projector of each view; DINO: the
           student's forward + backward of the two global views together and of the local views together
           (backbone and head), the teacher's forward of the global views. Every method at its paper's head
           sizes (DINO: the paper's 8 local views of 96/224 of the side, 14 px at 32).
  selfsup  the method's forward, loss, backward, LARS step, zero_grad and (BYOL) the EMA update.
  (torch SGD)  for reference, not a part: torch's own momentum SGD step over the same parameters, the least
           any update costs; the *_vs_floor_plus_sgd ratios put it in the floor (an optimizer step over heads
           much larger than the backbone, Barlow Twins' and VICReg's, is not overhead around the method).
  lightly  the same step written with lightly's parts (heads, NTXentLoss / NegativeCosineSimilarity,
           LARS, update_momentum), when lightly is importable.

The three alternate, repeat after repeat, and the table gives medians: (b)/(a) is measured in one run.

    python benchmarks/step.py                                   # the issue's configuration
    python benchmarks/step.py --width 0.25 --batch-size 32 --steps 3   # a quick look
    /tmp/benchenv/bin/python benchmarks/step.py                 # with lightly (benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from selfsup.methods import METHODS
from selfsup.models import ResNetBackbone
from selfsup.train.optim import build_optimizer, build_scheduler
from selfsup.train.step import TrainingStep

LR, WEIGHT_DECAY, MOMENTUM_EMA = 0.3, 1e-6, 0.996


def autocast(dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def backbone(width: float) -> nn.Module:
    return ResNetBackbone("resnet18", cifar_stem=True, width=width)


def method_views(method: str, batch: int, size: int) -> list[torch.Tensor]:
    """The views a step of ``method`` takes: its recipes' sizes (two, or DINO's multi-crop), random pixels."""
    recipes = METHODS[method].view_recipes(METHODS[method].Settings(), size, (0.5,) * 3, (0.25,) * 3, None)
    return [torch.randn(batch, 3, recipe.crop_size, recipe.crop_size) for recipe in recipes]


def floor_step(method: str, model: nn.Module, views: list[torch.Tensor], dtype: str) -> Callable[[], None]:
    """(a) Only the networks' forward and backward passes."""
    view1, view2 = views[:2]
    def simclr() -> None:
        with autocast(dtype):
            projections = model.projector(model.backbone(torch.cat([view1, view2])))
        projections.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def online_and_target(predict: bool, target: tuple[str, str] | None, views=(view1, view2),
                          target_views=(view1, view2)) -> Callable[[], None]:
        """Online forward + backward of each of ``views`` (with the predictor when ``predict``), and the
        forward of the target networks ``target`` (backbone, projector attribute names) of ``target_views``."""
        def run() -> None:
            with autocast(dtype):
                outputs = [model.projector(model.backbone(v)) for v in views]
                if predict:
                    outputs = [model.predictor(z) for z in outputs]
                if target is not None:
                    with torch.no_grad():
                        for v in target_views:
                            getattr(model, target[1])(getattr(model, target[0])(v))
            sum(z.float().sum() for z in outputs).backward()
            model.zero_grad(set_to_none=True)

        return run

    def dino() -> None:
        with autocast(dtype):
            student = [model.head(model.backbone(torch.cat(views[:2])))[0]]
            if len(views) > 2:
                student.append(model.head(model.backbone(torch.cat(views[2:])))[0])
            with torch.no_grad():
                model.teacher_head(model.teacher_backbone(torch.cat(views[:2])))
        sum(z.float().sum() for z in student).backward()
        model.zero_grad(set_to_none=True)

    steps = {"simclr": simclr, "dino": dino,
             "byol": online_and_target(True, ("target_backbone", "target_projector")),
             "simsiam": online_and_target(True, None),
             "moco-v2": online_and_target(False, ("key_backbone", "key_projector"), (view1,), (view2,)),
             "moco-v3": online_and_target(True, ("key_backbone", "key_projector")),
             "barlow-twins": online_and_target(False, None),
             "vicreg": online_and_target(False, None)}
    return steps[method]


def selfsup_step(method: str, model: nn.Module, views: list[torch.Tensor], dtype: str,
                 optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """(b) selfsup's full training step: :class:`selfsup.train.step.TrainingStep`, the one ``selfsup
    pretrain`` runs (forward, loss check, backward, LARS, schedule, the method's momentum update)."""
    total_steps = 10**6  # a schedule long enough that the benchmark never reaches its end
    training_step = TrainingStep(model, optimizer, build_scheduler(optimizer, total_steps, 0), total_steps,
                                 1, precision=dtype)  # an epoch a step: past DINO's frozen first epoch
    steps = itertools.count()

    def step() -> None:
        training_step(views, next(steps))

    return step


def overhead_parts(method: str, model: nn.Module, optimizer: torch.optim.Optimizer, views: list[torch.Tensor],
                   repeats: int) -> dict[str, float]:
    """Median seconds of each part of the step beyond the floor, timed alone (less noisy than the
    difference of two whole steps): the loss's forward and backward on embeddings of the step's
    shapes, the LARS step and zero_grad on the model's gradients, and the EMA update."""
    batch = views[0].shape[0]
    with torch.no_grad():  # the embeddings' size, from one forward pass
        dim = model(*(view[:2] for view in views)).embeddings[0].shape[1]
    z1, z2 = (torch.randn(batch, dim, requires_grad=True) for _ in range(2))
    queue = getattr(model, "queue", None)  # MoCo v2's negatives
    if method == "dino":  # as the method calls it: the student's logits (K wide) in blocks of the views that went
        # through the network together (2 global, the local ones), the teacher's of the global views; in [-1, 1]
        # as the head's are (a unit-norm last layer over the unit bottleneck): N(0, 1) logits / 0.04 would
        # underflow exp to subnormals, whose arithmetic is many times slower than a real step's
        width = model.settings.output_dim
        student = [(torch.rand(2, batch, width) * 2 - 1).requires_grad_(),
                   (torch.rand(len(views) - 2, batch, width) * 2 - 1).requires_grad_()]
        teacher = [torch.rand(2, batch, width) * 2 - 1]

    def loss() -> None:
        for leaf in (z1, z2, *(student if method == "dino" else ())):
            leaf.grad = None  # as in a step: a fresh gradient, not one added to the last repeat's
        if method == "dino":
            model.criterion(student, teacher).backward()
        elif queue is not None:  # the queue holds unit keys (MoCo v2 enqueues them normalised)
            model.criterion(z1, z2, queue=queue, queue_normalized=True).backward()
        else:
            model.criterion(z1, z2).backward()

    def optimizer_step() -> None:
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.grad is None:
                parameter.grad = torch.randn_like(parameter)
        optimizer.step()

    parts = {"loss fwd+bwd": loss, "LARS step": optimizer_step,
             "zero_grad": lambda: optimizer.zero_grad(set_to_none=True)}
    if model.momentum_at(0, 1) is not None:
        parts["EMA update"] = lambda: model.update_target(MOMENTUM_EMA)
    if queue is not None:
        parts["enqueue"] = lambda: model._enqueue(z2.detach())
    seconds = {}
    for name, part in parts.items():
        if name == "zero_grad":
            optimizer_step()
        part()
        times = []
        for _ in range(repeats):
            if name == "zero_grad":
                optimizer_step()  # gradients to clear, outside the timing
            start = time.perf_counter()
            part()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
    return seconds


def plain_sgd_seconds(model: nn.Module, repeats: int) -> float:
    """Median seconds of torch's own momentum SGD step (grouped kernels) over ``model``'s trainable parameters:
    what any optimizer's update costs at least, since each reads the gradient, the parameter and a buffer and
    writes two of them. Barlow Twins' and VICReg's 8192-wide projectors make it large beside the networks'
    passes (138 M parameters against ResNet-18's 11 M)."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.SGD(parameters, lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY, foreach=True)
    optimizer.step()  # the momentum buffers exist from here, as in every step after a run's first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lightly_step(method: str, width: float, view1, view2, dtype: str) -> Callable[[], None]:
    """(c) The same step with lightly's parts, as in lightly's example scripts."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.lars import LARS

    encoder = backbone(width)
    features = encoder.feature_dim
    if method == "simclr":
        model = nn.ModuleDict({"backbone": encoder, "head": SimCLRProjectionHead(features, 2048, 128)})
        criterion = NTXentLoss(temperature=0.5)
    else:
        model = nn.ModuleDict({"backbone": encoder, "head": BYOLProjectionHead(features, 4096, 256),
                               "predictor": BYOLPredictionHead(256, 4096, 256)})
        target = nn.ModuleDict({"backbone": copy.deepcopy(encoder), "head": copy.deepcopy(model["head"])})
        deactivate_requires_grad(target)
        criterion = NegativeCosineSimilarity()
    optimizer = LARS(model.parameters(), lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY)

    def simclr() -> None:
        with autocast(dtype):
            z = model["head"](model["backbone"](torch.cat([view1, view2])))
        loss = criterion(*z.float().chunk(2))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def byol() -> None:
        update_momentum(model["backbone"], target["backbone"], m=MOMENTUM_EMA)
        update_momentum(model["head"], target["head"], m=MOMENTUM_EMA)
        with autocast(dtype):
            p1, p2 = (model["predictor"](model["head"](model["backbone"](v))) for v in (view1, view2))
            with torch.no_grad():
                z1, z2 = (target["head"](target["backbone"](v)) for v in (view1, view2))
        loss = 0.5 * (criterion(p1.float(), z2.float()) + criterion(p2.float(), z1.float()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return simclr if method == "simclr" else byol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"],
                        choices=sorted(METHODS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed repeats of each variant")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="CPU autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-lightly", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    lightly_version = None
    if not args.no_lightly:
        try:
            import lightly
            lightly_version = lightly.__version__
        except ImportError:
            print("lightly is not installed: its column is skipped. Install it in a separate environment:\n"
                  "  python -m venv --system-site-packages /tmp/benchenv\n"
                  "  /tmp/benchenv/bin/pip install --no-deps lightly lightning-utilities")

    rows, ratios = [], {}
    for method in args.methods:
        views = method_views(method, args.batch_size, args.image_size)
        view1, view2 = views[:2]
        model = METHODS[method](backbone(args.width)).train()  # the paper's head sizes
        optimizer = build_optimizer("lars", model, lr=LR, weight_decay=WEIGHT_DECAY)
        variants = {"floor": floor_step(method, model, views, args.dtype),
                    "selfsup step": selfsup_step(method, model, views, args.dtype, optimizer)}
        if lightly_version and method in ("simclr", "byol"):
            variants["lightly step"] = lightly_step(method, args.width, view1, view2, args.dtype)
        for run in variants.values():  # warm-up: allocator, oneDNN primitives, optimizer state
            run()
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.steps):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
        median = {name: statistics.median(times) for name, times in seconds.items()}
        for name, value in median.items():
            rows.append((method, name, value, args.batch_size / value, value / median["floor"]))
        ratios[f"{method}_selfsup_vs_floor"] = median["selfsup step"] / median["floor"]
        parts = overhead_parts(method, model, optimizer, views, repeats=max(5, args.steps))
        for name, value in parts.items():
            rows.append((method, f"  {name}", value, float("nan"), value / median["floor"]))
        ratios[f"{method}_floor_plus_parts_vs_floor"] = 1 + sum(parts.values()) / median["floor"]
        sgd = plain_sgd_seconds(model, repeats=max(5, args.steps))
        rows.append((method, "  (torch SGD)", sgd, float("nan"), sgd / median["floor"]))
        ratios[f"{method}_selfsup_vs_floor_plus_sgd"] = median["selfsup step"] / (median["floor"] + sgd)
        ratios[f"{method}_floor_plus_parts_vs_floor_plus_sgd"] = ((median["floor"] + sum(parts.values()))
                                                                 / (median["floor"] + sgd))
        if "lightly step" in median:
            ratios[f"{method}_selfsup_vs_lightly"] = median["selfsup step"] / median["lightly step"]

    print(f"\ntraining step, ResNet-18 CIFAR stem (width {args.width}), {args.image_size} px, batch "
          f"{args.batch_size}, {args.dtype}, {torch.get_num_threads()} threads, medians of {args.steps} "
          f"(torch {torch.__version__}, lightly {lightly_version}, {platform.machine()})")
    print(f"{'method':<12} {'variant':<15} {'s/step':>9} {'images/s':>9} {'vs floor':>9}")
    for method, name, value, images_per_second, relative in rows:
        print(f"{method:<12} {name:<15} {value:>9.4f} {images_per_second:>9.1f} {relative:>8.4f}x")
    print("(indented rows: the step's parts beyond the floor, each timed alone; floor_plus_parts_vs_floor\n"
          " in the JSON line is 1 + their sum / floor, the step's overhead free of the noise between steps.\n"
          " (torch SGD): not a part, the floor of any update: torch.optim.SGD(momentum=0.9, foreach=True) over\n"
          " the same parameters; the *_vs_floor_plus_sgd ratios count it in the floor)")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (all variants): {peak_rss_mib:.0f} MiB")
    print(json.dumps({"benchmark": "step", "batch_size": args.batch_size, "width": args.width,
                      "dtype": args.dtype, "threads": torch.get_num_threads(), "lightly": lightly_version,
                      "seconds": {f"{m}_{n.strip().replace(' ', '_')}": round(v, 5) for m, n, v, _, _ in rows},
                      "ratios": {k: round(v, 4) for k, v in ratios.items()},
                      "peak_rss_mib": round(peak_rss_mib)}))


if __name__ == "__main__":
    main()
