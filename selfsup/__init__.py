"""selfsup: self-supervised representation learning on images (BYOL, SimCLR, SimSiam, MoCo v2/v3, Barlow Twins,
VICReg, DINO).

Subpackages follow the flow of a run: data -> transforms -> models -> losses -> methods -> train -> eval.
The names a user needs are here, at the top (``docs/python_api.md`` has examples):

- methods: :class:`BYOL`, :class:`SimCLR`, :class:`SimSiam`, :class:`MoCoV2`, :class:`MoCoV3`,
  :class:`BarlowTwins`, :class:`VICReg`, :class:`DINO` (each with its ``...Settings``), their base
  :class:`Method`, their output :class:`MethodOutput`, and :data:`METHODS` (name -> class);
- losses: :class:`NTXentLoss`, :class:`BYOLLoss`, :class:`InfoNCELoss`, :class:`NegativeCosineLoss`,
  :class:`BarlowTwinsLoss`, :class:`VICRegLoss`, :class:`DINOLoss`;
- views: :class:`ViewConfig`, the recipes :func:`byol_views`, :func:`simclr_view`, :func:`moco_v2_view`,
  :func:`dino_views` (each method's is ``Method.view_recipes``), the batched augmentation
  :class:`BatchedViewAugment` / :class:`BatchedViews` (uint8 batches on the training device) and the per-image
  :func:`view_transform` / :class:`MultiViewTransform`;
- parts: :class:`ResNetBackbone`, the :class:`LARS` optimizer;
- whole jobs: :func:`pretrain` with a :class:`PretrainConfig`, :func:`load_backbone`, :func:`evaluate`.

Importing the package is cheap: it imports nothing (no torch) until one of these names is first used
(PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_LAZY_NAMES: dict[str, str] = {
    # methods
    **dict.fromkeys(["METHODS", "Method", "MethodOutput", "BYOL", "BYOLSettings", "SimCLR", "SimCLRSettings",
                     "SimSiam", "SimSiamSettings", "MoCoV2", "MoCoV2Settings", "MoCoV3", "MoCoV3Settings",
                     "BarlowTwins", "BarlowTwinsSettings", "VICReg", "VICRegSettings", "DINO", "DINOSettings"],
                    "selfsup.methods"),
    # losses
    **dict.fromkeys(["BYOLLoss", "BarlowTwinsLoss", "DINOLoss", "InfoNCELoss", "NTXentLoss", "NegativeCosineLoss",
                     "VICRegLoss"], "selfsup.losses"),
    # views
    **dict.fromkeys(["ViewConfig", "MultiViewTransform", "view_transform", "eval_transform"],
                    "selfsup.transforms.views"),
    **dict.fromkeys(["BatchedViewAugment", "BatchedViews"], "selfsup.transforms.batched"),
    "byol_views": "selfsup.methods.byol",
    "simclr_view": "selfsup.methods.simclr",
    "moco_v2_view": "selfsup.methods.moco_v2",
    "dino_views": "selfsup.methods.dino",
    # parts
    "ResNetBackbone": "selfsup.models.backbones",
    "LARS": "selfsup.train.optim",
    # whole jobs
    "PretrainConfig": "selfsup.config",
    "pretrain": "selfsup.pipeline",
    "load_backbone": "selfsup.eval.pretrained",
    "evaluate": "selfsup.eval.probe",
}

# The same names, spelled out for readers and linters (tests/test_api.py checks they agree).
__all__ = ["__version__", "BYOL", "BYOLLoss", "BYOLSettings", "BarlowTwins", "BarlowTwinsLoss",
           "BarlowTwinsSettings", "BatchedViewAugment", "BatchedViews", "DINO", "DINOLoss", "DINOSettings",
           "InfoNCELoss", "LARS", "METHODS", "Method", "MethodOutput", "MoCoV2", "MoCoV2Settings", "MoCoV3",
           "MoCoV3Settings", "MultiViewTransform", "NTXentLoss", "NegativeCosineLoss", "PretrainConfig",
           "ResNetBackbone", "SimCLR", "SimCLRSettings", "SimSiam", "SimSiamSettings", "VICReg", "VICRegLoss",
           "VICRegSettings", "ViewConfig", "byol_views", "dino_views", "eval_transform", "evaluate", "load_backbone",
           "moco_v2_view", "pretrain", "simclr_view", "view_transform"]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used (PEP 562)."""
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from selfsup.config import PretrainConfig
    from selfsup.eval.pretrained import load_backbone
    from selfsup.eval.probe import evaluate
    from selfsup.losses import (
        BarlowTwinsLoss,
        BYOLLoss,
        DINOLoss,
        InfoNCELoss,
        NegativeCosineLoss,
        NTXentLoss,
        VICRegLoss,
    )
    from selfsup.methods import (
        BYOL,
        DINO,
        METHODS,
        BarlowTwins,
        BarlowTwinsSettings,
        BYOLSettings,
        DINOSettings,
        Method,
        MethodOutput,
        MoCoV2,
        MoCoV2Settings,
        MoCoV3,
        MoCoV3Settings,
        SimCLR,
        SimCLRSettings,
        SimSiam,
        SimSiamSettings,
        VICReg,
        VICRegSettings,
    )
    from selfsup.methods.byol import byol_views
    from selfsup.methods.dino import dino_views
    from selfsup.methods.moco_v2 import moco_v2_view
    from selfsup.methods.simclr import simclr_view
    from selfsup.models.backbones import ResNetBackbone
    from selfsup.pipeline import pretrain
    from selfsup.train.optim import LARS
    from selfsup.transforms.batched import BatchedViewAugment, BatchedViews
    from selfsup.transforms.views import MultiViewTransform, ViewConfig, eval_transform, view_transform
