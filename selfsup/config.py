"""Typed, strict configuration: dataclasses whose fields are the settings, checked on load.

Settings come from defaults, then a YAML recipe (``--config``), then command-line flags. An unknown
key or a value of the wrong type is an error that names the setting, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"setting '{name}': {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"setting '{name}': {value!r} has the wrong type ({'; '.join(errors)})")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"setting '{name}': expected a list, got {value!r}")
        return tuple(_check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"setting '{name}': expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"setting '{name}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"setting '{name}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"setting '{name}': expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"setting '{name}': expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported annotation {annotation!r} for setting '{name}'")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, values: dict[str, Any], source: str = "settings") -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys and bad types raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(repr(k) for k in unknown)}; "
                          f"known settings: {', '.join(sorted(types_))}")
    checked = {name: _check_type(name, value, types_[name]) for name, value in values.items()}
    return cls(**checked)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe with the safe loader (no arbitrary Python objects)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    return values


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (tuples become lists, so it survives JSON and YAML)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of ``selfsup pretrain``. ``None`` means: the method's paper default (see
    :func:`resolve`), adapted to the data where the field's comment says so."""

    method: Literal["byol", "simclr"] = "byol"
    framework: Literal["pytorch", "tensorflow"] = "pytorch"  # tensorflow: SimCLR only (pip install selfsup[tensorflow])
    # A folder (ImageFolder with class sub-folders, or flat), an .npz/.npy array file, or a built-in
    # data set: "digits" (scikit-learn, the embedded default) or "fashion-mnist" (Debian package).
    data: str = "digits"
    test_data: str | None = None  # labelled data for the final kNN / linear table; built-ins use their test split
    out: str = "runs/pretrain"
    image_size: int | None = None  # None: the data's own side for images <= 64 px (at least 16), else 224
    # Side of the augmented training views; None: image_size. Features are evaluated at image_size, so smaller
    # crops train faster and a network trained on crops sees objects at their test size (Touvron et al. 2019).
    crop_size: int | None = None
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    width: float = 1.0
    cifar_stem: bool | None = None  # None: on for images <= 64 px (SimCLR's CIFAR-10 setup)
    projection_hidden_dim: int | None = None  # SimCLR 2048, BYOL 4096
    projection_dim: int | None = None  # SimCLR 128, BYOL 256
    prediction_hidden_dim: int = 4096  # BYOL only
    predictor_lr_multiplier: float = 1.0  # BYOL only: the predictor's lr over the encoder's (paper: 1)
    temperature: float = 0.5  # SimCLR; the paper's CIFAR-10 value (0.1 for ImageNet at batch 4096)
    gather_distributed: bool = True  # SimCLR: negatives from all ranks
    momentum_base: float = 0.996  # BYOL's tau_base
    color_strength: float = 1.0  # SimCLR's s; 0.5 in its CIFAR-10 runs
    crop_min_scale: float = 0.08  # smallest crop area fraction (both papers: 0.08)
    blur: bool | None = None  # None: off for images <= 64 px
    epochs: int = 100
    max_steps: int | None = None  # stop after this many steps (schedules still span all epochs)
    batch_size: int = 256  # global batch, split over processes
    optimizer: Literal["lars", "sgd", "adamw"] = "lars"
    base_lr: float | None = None  # per 256 images: SimCLR LARS 0.3, BYOL LARS 0.2, SGD 0.06, AdamW 1e-3
    lars_trust_coefficient: float = 0.001  # LARS's eta (both papers: 0.001)
    # LARS: cap each layer's step at plain SGD's at the scheduled lr (solo-learn's CIFAR recipes, with eta 0.02)
    lars_clip: bool = False
    weight_decay: float | None = None  # SimCLR 1e-6, BYOL 1.5e-6 (LARS); SGD 5e-4; AdamW 1e-6
    warmup_epochs: float = 10.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # NHWC memory layout. None: on for CUDA (tensor-core convolutions want it), off on CPU, where it was 1.1-1.4x
    # faster for some shapes and 2.5x slower for others (16 px digits at width 1/4; benchmarks/README.md).
    channels_last: bool | None = None
    grad_clip: float | None = None
    online_probe: bool = True  # a linear classifier on detached features, when the data has labels
    on_nonfinite: Literal["stop", "skip"] = "stop"
    knn_every: int = 0  # epochs between kNN checks during training (0: only at the end)
    knn_k: int = 200
    knn_temperature: float = 0.1
    eval_at_end: bool = True
    linear_max_iter: int = 100  # L-BFGS iterations of each linear-probe fit in the final table
    report: bool = True  # OUT/report.md with curves, monitors and an embedding map (needs matplotlib)
    num_workers: int = 2  # DataLoader workers for images streamed from disk
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    checkpoint_every_steps: int = 0  # 0: checkpoints at the end of each epoch only
    keep_checkpoints: int = 3
    skip_bad_images: bool = False
    devices: int = 1  # processes to start on this machine (torchrun does it when launched by it)
    sync_batchnorm: bool = True  # with more than one process
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "knn_k": self.knn_k,
                    "log_every": self.log_every, "keep_checkpoints": self.keep_checkpoints,
                    "devices": self.devices, "linear_max_iter": self.linear_max_iter}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"setting '{name}' must be >= 1, got {value}")
        for name in ("temperature", "width", "knn_temperature", "color_strength", "predictor_lr_multiplier",
                     "lars_trust_coefficient"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"setting '{name}' must be > 0, got {getattr(self, name)}")
        for name in ("image_size", "crop_size"):
            if getattr(self, name) is not None and getattr(self, name) < 8:
                raise ConfigError(f"setting '{name}' must be >= 8, got {getattr(self, name)}")
        if not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"setting 'crop_min_scale' must be in (0, 1], got {self.crop_min_scale}")
        if not 0 <= self.momentum_base <= 1:
            raise ConfigError(f"setting 'momentum_base' must be in [0, 1], got {self.momentum_base}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"setting 'max_steps' must be >= 1, got {self.max_steps}")
        for name in ("base_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"setting '{name}' must be >= 0, got {value}")
        if self.warmup_epochs < 0 or self.num_workers < 0 or self.knn_every < 0 or self.checkpoint_every_steps < 0:
            raise ConfigError("settings 'warmup_epochs', 'num_workers', 'knn_every' and "
                              "'checkpoint_every_steps' must be >= 0")
        for name in ("projection_hidden_dim", "projection_dim", "prediction_hidden_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"setting '{name}' must be >= 1, got {value}")


# Paper defaults by (method, optimizer): base learning rate per 256 images and weight decay.
# SimCLR: LARS lr 0.3 x B/256, wd 1e-6 (Chen et al. 2020, sec. B.6 / B.9). BYOL: LARS lr 0.2 x B/256,
# wd 1.5e-6 (Grill et al. 2020, sec. C). SGD and AdamW values follow solo-learn/lightly CIFAR recipes.
_LR_WD = {
    ("simclr", "lars"): (0.3, 1e-6), ("byol", "lars"): (0.2, 1.5e-6),
    ("simclr", "sgd"): (0.06, 5e-4), ("byol", "sgd"): (0.06, 5e-4),
    ("simclr", "adamw"): (1e-3, 1e-6), ("byol", "adamw"): (1e-3, 1e-6),
}


@dataclass(frozen=True)
class ResolvedHyperparameters:
    base_lr: float
    weight_decay: float
    projection_hidden_dim: int
    projection_dim: int


def resolve(config: PretrainConfig) -> ResolvedHyperparameters:
    """Fill the ``None`` defaults that depend on the method and optimizer."""
    lr, wd = _LR_WD[(config.method, config.optimizer)]
    hidden, out = (2048, 128) if config.method == "simclr" else (4096, 256)
    return ResolvedHyperparameters(
        base_lr=config.base_lr if config.base_lr is not None else lr,
        weight_decay=config.weight_decay if config.weight_decay is not None else wd,
        projection_hidden_dim=config.projection_hidden_dim or hidden,
        projection_dim=config.projection_dim or out,
    )


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``selfsup eval`` (and of the evaluation at the end of pretraining)."""

    checkpoint: str | None = None
    train_data: str = "digits"
    test_data: str | None = None
    out: str | None = None
    image_size: int | None = None
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_max_iter: int = 100
    batch_size: int = 256
    baselines: bool = True  # also the same backbone at random init and raw pixels
    device: str = "auto"
    seed: int = 0
    num_workers: int = 2
    skip_bad_images: bool = False  # leave out unreadable images instead of stopping
    # Fractions of the training labels (class-balanced, drawn with ``seed``) for the low-label table of linear
    # probe and fine-tuning, as the papers' semi-supervised tables use 0.01 and 0.1; 1.0 fine-tunes on all.
    low_label_fractions: tuple[float, ...] = ()
    finetune_epochs: int = 30

    def __post_init__(self) -> None:
        for name in ("knn_k", "linear_max_iter", "batch_size", "finetune_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting '{name}' must be >= 1, got {getattr(self, name)}")
        for fraction in self.low_label_fractions:
            if not 0 < fraction <= 1:
                raise ConfigError(f"setting 'low_label_fractions': each fraction must be in (0, 1], got {fraction}")
