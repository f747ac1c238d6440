"""Backbones for transfer: from a selfsup checkpoint, a torchvision state dict, or random init; and
saving results atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from selfsup.checkpoints import load_checkpoint
from selfsup.files import atomic_torch_save, write_json
from selfsup.models.backbones import ResNetBackbone
from selfsup.transforms.views import IMAGENET_MEAN, IMAGENET_STD


def _resnet_config_from_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Name, stem and width of the ResNet whose torchvision-named weights are ``state_dict``."""
    if "conv1.weight" not in state_dict or "layer4.0.conv1.weight" not in state_dict:
        raise ValueError(f"{path}: not a ResNet state dict (no conv1.weight / layer4.0.conv1.weight); "
                         f"found keys like {sorted(state_dict)[:5]} (an exported torchvision:/timm: backbone does "
                         "not name its architecture: give the run's backbone.pt or a checkpoint)")
    blocks = [len({key.split(".")[1] for key in state_dict if key.startswith(f"layer{stage}.")})
              for stage in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in state_dict
    names = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
             (True, (3, 4, 6, 3)): "resnet50"}
    name = names.get((bottleneck, tuple(blocks)))
    if name is None:
        raise ValueError(f"{path}: a ResNet with blocks {blocks} (bottleneck={bottleneck}) is not one of "
                         f"resnet18, resnet34, resnet50")
    stem = state_dict["conv1.weight"]
    return {"name": name, "cifar_stem": stem.shape[-1] == 3, "width": stem.shape[0] / 64}


def load_backbone(path: str | Path) -> ResNetBackbone:
    """The pretrained :class:`ResNetBackbone` (images -> pooled features, ``feature_dim`` wide) saved in ``path``,
    for a downstream task: a pretraining checkpoint (``OUT/checkpoints/step_*.pt``), ``OUT/backbone.pt``, or a
    torchvision-named ResNet state dict (``selfsup export``'s). Loaded safely (``weights_only=True``) and
    strictly; see :func:`load_backbone_and_metadata`, which also returns the image size and normalization."""
    return load_backbone_and_metadata(path)[0]


def load_backbone_and_metadata(path: str | Path) -> tuple[ResNetBackbone, dict[str, Any]]:
    """A :class:`ResNetBackbone` (or, from a run with a torchvision:/timm: backbone, the same
    :class:`~selfsup.models.external.ExternalBackbone`, rebuilt from its saved name and ``backbone_args``) with the
    weights of ``path``.

    Accepts a selfsup pretraining checkpoint (a dict with ``"backbone"``, a ResNetBackbone state dict,
    and ``"backbone_config"``, ``{"name", "cifar_stem", "width"}``, or ``{"name", "backbone_args"}``) or a plain
    torchvision-named ResNet
    state dict (what ``selfsup export`` writes, or torchvision's ImageNet files; ``fc.*`` is dropped).
    Loading is strict: a missing or unexpected weight is an error naming the file. Loading is safe
    (``weights_only=True``): a file carrying code is refused.

    Returns the backbone and what the checkpoint says about its inputs: ``image_size`` (None when
    unknown), ``mean`` and ``std`` (ImageNet's when unknown).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    content = load_checkpoint(path)
    if "backbone" in content and isinstance(content.get("backbone_config"), dict) and \
            "backbone_args" in content["backbone_config"]:  # a torchvision or timm model
        return _external_backbone(content, path)
    if "backbone" in content:
        config = content.get("backbone_config")
        if not isinstance(config, dict) or not {"name", "cifar_stem", "width"} <= set(config):
            raise ValueError(f"{path}: a 'backbone' entry needs a 'backbone_config' dict with name, "
                             "cifar_stem and width")
        state_dict = {key.removeprefix("resnet."): value for key, value in content["backbone"].items()}
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
        config = {key: config[key] for key in ("name", "cifar_stem", "width")}
    else:
        state_dict = {key: value for key, value in content.items()
                      if isinstance(value, torch.Tensor) and not key.startswith("fc.")}
        config = _resnet_config_from_state_dict(state_dict, path)
    backbone = ResNetBackbone(config["name"], cifar_stem=bool(config["cifar_stem"]),
                              width=float(config["width"]))
    try:
        backbone.resnet.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit a {config}: {error}") from error
    metadata = {"image_size": content.get("image_size"), "mean": tuple(content.get("mean", IMAGENET_MEAN)),
                "std": tuple(content.get("std", IMAGENET_STD)), "backbone_config": config}
    return backbone, metadata


def _external_backbone(content: dict[str, Any], path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from selfsup.models.external import ExternalBackbone

    config = {"name": str(content["backbone_config"]["name"]),
              "backbone_args": dict(content["backbone_config"]["backbone_args"] or {})}
    try:
        backbone = ExternalBackbone(config["name"], config["backbone_args"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        backbone.load_state_dict(content["backbone"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit {config['name']} with backbone_args "
                         f"{config['backbone_args']}: {' '.join(str(error).split())}") from error
    metadata = {"image_size": content.get("image_size"), "mean": tuple(content.get("mean", IMAGENET_MEAN)),
                "std": tuple(content.get("std", IMAGENET_STD)), "backbone_config": config}
    return backbone, metadata


def save_atomically(content: Any, path: str | Path) -> None:
    """``torch.save`` (or JSON for a ``.json`` path), written atomically: never half-written."""
    if Path(path).suffix == ".json":
        write_json(path, content)
    else:
        atomic_torch_save(content, path)
