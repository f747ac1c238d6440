"""``selfsup transfer detect`` and ``selfsup transfer segment``: fine-tune a pretrained backbone and a
randomly initialized one (and ImageNet-supervised weights when given a local file) at the same budget,
and print their scores side by side.

Settings: the defaults of :class:`TransferOptions` and of the task's settings (``DetectionSettings``
in :mod:`selfsup.eval.detection`, ``SegmentationSettings`` in :mod:`selfsup.eval.segmentation`),
then a YAML recipe (``--config``, strict: an unknown key is an error naming it), then flags.
Outputs in ``--out``: ``<variant>/model.pt`` and ``<variant>/metrics.json`` for each variant, and
``summary.json``; all written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from selfsup.eval.transfer_settings import DetectionSettings, SegmentationSettings
from selfsup.files import json_text
from selfsup.flags import add_settings_flags, settings_from_args
from selfsup.settings import ConfigError, load_yaml

Task = Literal["detect", "segment"]


def default_pennfudan_dir() -> Path:
    """``$SELFSUP_DATASETS/pennfudan``, else ``../shared/datasets/pennfudan`` next to the project."""
    from selfsup.data.datasets import default_datasets_dir

    return default_datasets_dir() / "pennfudan"


@dataclass(frozen=True)
class TransferOptions:
    """What to compare and where the data and outputs are (the budget is in the task's settings).

    Data formats: ``pennfudan`` (the folder of PNGImages/PedMasks, split 120/50 by sorted name);
    ``coco`` (detection: ``DATA/train.json``, ``DATA/test.json``, image files under ``DATA/images``);
    ``mask-pairs`` (segmentation: ``DATA/{train,test}/images/*`` and ``DATA/{train,test}/masks/<stem>.png``,
    with ``num_classes``).
    """

    # A selfsup checkpoint or a torchvision ResNet state dict to fine-tune; none: only the random init.
    checkpoint: str | None = None
    # A local torchvision ResNet state dict (ImageNet-supervised) to compare too; nothing is downloaded.
    imagenet_weights: str | None = None
    # Also fine-tune the same architecture from random init at the same budget.
    random_baseline: bool = True
    # The data folder; none: $SELFSUP_DATASETS/pennfudan or ../shared/datasets/pennfudan.
    data: str | None = None
    # pennfudan, coco (detection) or mask-pairs (segmentation); see above.
    data_format: Literal["pennfudan", "coco", "mask-pairs"] = "pennfudan"
    # Classes of mask-pairs data, background included.
    num_classes: int | None = None
    # Output folder: a model and metrics per variant, and summary.json.
    out: str = "runs/transfer"
    # Architecture of the random init when no checkpoint is given.
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    # Width of the random init when no checkpoint is given.
    width: float = 1.0
    # CIFAR stem of the random init when no checkpoint is given.
    cifar_stem: bool = False
    # CPU threads for torch; none: torch's default.
    threads: int | None = None


@dataclass(frozen=True)
class DetectionTransfer:
    """The settings of ``selfsup transfer detect``."""

    # What to compare, and where the data and outputs are.
    options: TransferOptions = field(default_factory=TransferOptions)
    # The fine-tuning budget.
    budget: DetectionSettings = field(default_factory=DetectionSettings)


@dataclass(frozen=True)
class SegmentationTransfer:
    """The settings of ``selfsup transfer segment``."""

    # What to compare, and where the data and outputs are.
    options: TransferOptions = field(default_factory=TransferOptions)
    # The fine-tuning budget.
    budget: SegmentationSettings = field(default_factory=SegmentationSettings)


_SETTINGS = {"detect": DetectionTransfer, "segment": SegmentationTransfer}


def _datasets(task: Task, options: TransferOptions):
    from selfsup.data.annotations import CocoDetection, MaskPairs, PennFudan

    root = Path(options.data) if options.data else default_pennfudan_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root} (set --data or SELFSUP_DATASETS)")
    if options.data_format == "pennfudan":
        kind = "detection" if task == "detect" else "segmentation"
        return PennFudan(root, "train", kind), PennFudan(root, "test", kind), 2
    if options.data_format == "coco" and task == "detect":
        train = CocoDetection(root / "train.json", root / "images")
        test = CocoDetection(root / "test.json", root / "images")
        if train.category_ids != test.category_ids:
            raise ValueError(f"{root / 'train.json'} and {root / 'test.json'} have different categories")
        return train, test, train.num_classes
    if options.data_format == "mask-pairs" and task == "segment":
        if options.num_classes is None or options.num_classes < 2:
            raise ConfigError("setting 'num_classes': mask-pairs data needs num_classes >= 2 "
                              "(background included)")
        return (MaskPairs(root / "train" / "images", root / "train" / "masks"),
                MaskPairs(root / "test" / "images", root / "test" / "masks"), options.num_classes)
    raise ConfigError(f"setting 'data_format': {options.data_format!r} is not a format for transfer {task}")


def _backbone_builders(options: TransferOptions, log: Callable[[str], None]) -> list[tuple[str, Callable]]:
    """(name, builder) of each backbone to compare; checkpoints are read once here, so a bad file fails
    before any training."""
    from selfsup.eval.pretrained import load_backbone
    from selfsup.models.backbones import ResNetBackbone, backbone_config

    builders: list[tuple[str, Callable]] = []
    architecture = {"name": options.backbone, "cifar_stem": options.cifar_stem, "width": options.width}
    if options.checkpoint:
        architecture = backbone_config(load_backbone(options.checkpoint))
        builders.append(("selfsup", lambda: load_backbone(options.checkpoint)))
    if options.random_baseline or not options.checkpoint:
        builders.append(("random", lambda: ResNetBackbone(**architecture)))
    if options.imagenet_weights:
        load_backbone(options.imagenet_weights)
        builders.append(("imagenet", lambda: load_backbone(options.imagenet_weights)))
    else:
        log("ImageNet-supervised baseline skipped: no --imagenet-weights PATH given (offline: nothing is "
            "downloaded; pass a local torchvision ResNet state dict to include it)")
    return builders


def run_transfer(task: Task, options: TransferOptions, settings: Any,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune and evaluate every backbone of :func:`_backbone_builders` at the budget ``settings``."""
    from selfsup.eval.pretrained import save_atomically
    from selfsup.models.backbones import backbone_config

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    train_set, test_set, num_classes = _datasets(task, options)
    log(f"transfer {task}: {len(train_set)} training and {len(test_set)} test images, {num_classes} classes")
    if task == "detect":
        from selfsup.eval.detection import finetune_detection as finetune
    else:
        from selfsup.eval.segmentation import finetune_segmentation as finetune
    out_dir = Path(options.out)
    results = []
    for name, build in _backbone_builders(options, log):
        torch.manual_seed(settings.seed)  # the same head initialization and data order for every backbone
        backbone = build()
        log(f"-- {name} backbone: {backbone_config(backbone)}")
        model, metrics = finetune(backbone, train_set, test_set, num_classes, settings, log)
        record = {"variant": name, "task": task, "backbone_config": backbone_config(backbone),
                  "options": dataclasses.asdict(options), "settings": dataclasses.asdict(settings),
                  "metrics": metrics}
        save_atomically({**record, "model": model.state_dict()}, out_dir / name / "model.pt")
        save_atomically(record, out_dir / name / "metrics.json")
        results.append(record)
    summary = {"task": task, "results": [{"variant": r["variant"], **r["metrics"]} for r in results]}
    save_atomically(summary, out_dir / "summary.json")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The side-by-side table, each variant's ratio to the random init, and one JSON line."""
    keys = ("map_50", "map") if summary["task"] == "detect" else ("miou", "pixel_accuracy")
    rows = {row["variant"]: row for row in summary["results"]}
    lines = [f"{'backbone':<10}" + "".join(f"{key:>16}" for key in keys) + f"{'train s':>10}"]
    for name, row in rows.items():
        scores = "".join(f"{row[key]:>16.4f}" for key in keys)
        lines.append(f"{name:<10}{scores}{row['train_seconds']:>10.0f}")
    if "random" in rows:
        for name, row in rows.items():
            if name != "random":
                ratios = [row[key] / rows["random"][key] if rows["random"][key] > 0 else float("nan")
                          for key in keys]
                lines.append(f"{name} / random: " + ", ".join(f"{k} x{r:.2f}" for k, r in zip(keys, ratios,
                                                                                           strict=True)))
    compact = {"task": summary["task"], **{row["variant"]: {key: round(row[key], 4) for key in keys}
                                           for row in summary["results"]}}
    lines.append(json_text(compact))
    return "\n".join(lines)


def resolve_settings(task: Task, args: argparse.Namespace) -> tuple[TransferOptions, Any]:
    """Defaults, then ``args.config`` (strict), then the flags given: (options, task settings)."""
    recipe = load_yaml(args.config) if args.config else None
    if recipe and "lr" in recipe:  # the name before pretrain's spelling was shared; its value must be converted
        raise ConfigError(f"{args.config}: setting 'lr' is now 'base_lr', the rate per 256 images as in pretrain: "
                          "base_lr = lr x 256 / batch_size")
    settings = settings_from_args(args, recipe, source=args.config or "command line")
    return settings.options, settings.budget


def _command(task: Task) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        options, settings = resolve_settings(task, args)
        print(format_summary(run_transfer(task, options, settings)))
        return 0

    return command


def add_transfer_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``transfer detect`` and ``transfer segment``; each sets ``func(args) -> exit code``."""
    transfer = subparsers.add_parser("transfer", help="fine-tune a pretrained backbone for detection or "
                                     "segmentation, against random init at the same budget")
    tasks = transfer.add_subparsers(dest="transfer_task", required=True)
    helps = {"detect": "Faster R-CNN + FPN; box mAP and mAP@0.5 (pycocotools)",
             "segment": "FCN or DeepLabV3 head; mIoU and pixel accuracy"}
    for task, help_text in helps.items():
        parser = tasks.add_parser(task, help=help_text, description=help_text)
        parser.add_argument("--config", help="YAML recipe (see configs/transfer_*.yaml); flags override it")
        add_settings_flags(parser, _SETTINGS[task])
        parser.set_defaults(func=_command(task))
    return transfer
