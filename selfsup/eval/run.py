"""``selfsup eval`` and ``selfsup export``: load a pretrained backbone, measure it, hand it on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from selfsup.config import EvalConfig
from selfsup.data.datasets import load_image_data
from selfsup.models import ResNetBackbone
from selfsup.train.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, load_checkpoint
from selfsup.transforms.views import IMAGENET_MEAN, IMAGENET_STD


def load_backbone(path: str | Path) -> tuple[ResNetBackbone, dict]:
    """A :class:`ResNetBackbone` from a pretraining checkpoint or ``backbone.pt`` (safe loading), with the
    metadata saved beside it (image_size, mean, std)."""
    state = load_checkpoint(path)
    if "backbone" not in state or "backbone_config" not in state:
        raise CheckpointError(f"{path} is not a selfsup checkpoint (no 'backbone' weights and config in it)")
    cfg = state["backbone_config"]
    backbone = ResNetBackbone(cfg["name"], cifar_stem=cfg["cifar_stem"], width=cfg["width"])
    backbone.load_state_dict(state["backbone"])
    meta = {"image_size": state.get("image_size"), "mean": tuple(state.get("mean", IMAGENET_MEAN)),
            "std": tuple(state.get("std", IMAGENET_STD)), "backbone_config": cfg}
    return backbone, meta


def run_evaluation(config: EvalConfig, log=print) -> dict:
    """kNN and linear probe (and baselines) of a checkpoint's backbone; writes eval.json to ``out``."""
    from selfsup.eval.table import evaluation_table, format_table
    from selfsup.train.loop import resolve_device

    if config.checkpoint is None:
        raise ValueError("setting 'checkpoint' is required: the pretraining checkpoint or backbone.pt to evaluate")
    backbone, meta = load_backbone(config.checkpoint)
    device = resolve_device(config.device)
    backbone.to(device)
    train = load_image_data(config.train_data, "train")
    test_spec = config.test_data or (config.train_data if config.train_data in ("digits", "fashion-mnist") else None)
    if test_spec is None:
        raise ValueError("setting 'test_data' is required for a data folder (the labelled test split)")
    test = load_image_data(test_spec, "test")
    image_size = config.image_size or meta["image_size"] or 224
    table = evaluation_table(backbone, train, test, image_size, meta["mean"], meta["std"], config.knn_k,
                             config.knn_temperature, config.linear_epochs, config.baselines, device,
                             config.seed, config.num_workers, progress=True, log=lambda *_: None)
    table["checkpoint"] = str(config.checkpoint)
    log(format_table(table))
    out = Path(config.out) if config.out else Path(config.checkpoint).resolve().parent
    atomic_write_text(out / "eval.json", json.dumps(table, indent=2))
    log(f"wrote {out / 'eval.json'}")
    return table


def export_torchvision(checkpoint: str | Path, output: str | Path) -> Path:
    """Write the backbone's weights under torchvision's names (``torchvision.models.resnetXX``, no ``fc``)."""
    backbone, _ = load_backbone(checkpoint)
    buffer = io.BytesIO()
    torch.save(backbone.torchvision_state_dict(), buffer)
    atomic_write_bytes(output, buffer.getvalue())
    return Path(output)
