"""The settings of ``selfsup pretrain`` and ``selfsup eval``.

Settings come from defaults, then a YAML recipe (``--config``), then command-line flags, checked as strictly
as :func:`selfsup.settings.from_dict` checks them. A method's own options live in its settings class
(:mod:`selfsup.methods`) and reach ``PretrainConfig.method_args``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from selfsup.settings import ConfigError, field_types, from_dict, to_dict

# Settings of PretrainConfig that say how and where a run goes, not what it trains: a resumed run may change
# them (every other setting must match the checkpoint's, or the restored state would mean something else).
HOW_TO_RUN = frozenset({
    "out", "test_data", "max_steps", "eval_at_end", "linear_max_iter", "report", "num_workers", "device",
    "log_every", "checkpoint_every_steps", "keep_checkpoints", "skip_bad_images", "devices", "progress",
    "knn_every", "knn_k", "knn_temperature", "on_nonfinite", "online_probe", "precision", "channels_last",
    "sync_batchnorm", "overwrite", "tensorboard", "threads",
})


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of ``selfsup pretrain``. ``None`` means: a default that depends on the method or the data,
    as the field's comment says. The method's own options (head sizes, temperature, momentum, ...) are in
    ``method_args``, checked against the method's settings class (see :mod:`selfsup.methods`)."""

    # The self-supervised method: a name in selfsup.methods.METHODS.
    method: str = "byol"
    # The method's own options (a mapping, checked against the method's settings; on the command line each has
    # its own flag, e.g. --temperature). In YAML: method_args: {temperature: 0.2}.
    method_args: Any = None
    # pytorch, or tensorflow for SimCLR in TensorFlow/Keras (pip install selfsup[tensorflow]).
    framework: Literal["pytorch", "tensorflow"] = "pytorch"
    # A folder (ImageFolder with class sub-folders, or flat), an .npz/.npy array file, or a built-in data set:
    # "digits" (scikit-learn, the embedded default) or "fashion-mnist" (Debian package).
    data: str = "digits"
    # Labelled data for the final kNN / linear table; built-in data sets use their own test split.
    test_data: str | None = None
    # Output folder: checkpoints, metrics.jsonl, backbone.pt, eval.json, report.md. It must be new or empty,
    # or hold this run (--resume), unless --overwrite.
    out: str = "runs/pretrain"
    # Start over in an --out that holds another run or other files: the run's files replace theirs (the old
    # checkpoints are moved aside to checkpoints-replaced-TIME/); files of other names are left alone.
    overwrite: bool = False
    # Side of the images the backbone is evaluated at; None: the data's own side for images <= 64 px (at least
    # 16), else 224.
    image_size: int | None = None
    # Side of the augmented training views; None: image_size. Features are evaluated at image_size, so smaller
    # crops train faster and a network trained on crops sees objects at their test size (Touvron et al. 2019).
    crop_size: int | None = None
    # The encoder: resnet18, resnet34 or resnet50 (selfsup's ResNets, with width and cifar_stem), any torchvision
    # classification model as torchvision:NAME (torchvision.models.list_models()) or any timm model as timm:NAME
    # (timm.list_models(); pip install selfsup[timm]), without its classifier (selfsup/models/external.py).
    backbone: str = "resnet18"
    # Keyword arguments of a torchvision:/timm: backbone's builder, e.g. image_size: 32 for torchvision's ViTs,
    # img_size: 32, patch_size: 4 for timm's. In YAML a mapping (backbone_args: {img_size: 32}); on the command
    # line NAME=VALUE,... (--backbone-args img_size=32,patch_size=4), which replaces the recipe's.
    backbone_args: Any = None
    # A local file of initial weights for the backbone: a state_dict under its library's names (torchvision's
    # names for selfsup's ResNets), read with torch.load(weights_only=True), classifier weights ignored; None:
    # random init. Nothing is ever downloaded.
    backbone_weights: str | None = None
    # Channel-width multiplier of the ResNet (1.0: torchvision's; 0.125 and 0.25 fit CPU budgets). selfsup's ResNets
    # only: a torchvision:/timm: backbone takes its sizes in backbone_args.
    width: float = 1.0
    # 3x3 stride-1 first convolution and no max-pool (SimCLR's CIFAR-10 setup); None: on for images <= 64 px.
    # selfsup's ResNets only.
    cifar_stem: bool | None = None
    # Smallest crop area fraction of the views' random resized crop, for every view at the training crop size (DINO's
    # local views keep their own, local_crop_scale); None: the method's recipe's (SimCLR and BYOL: 0.08; SimSiam and
    # MoCo v2: 0.2; DINO: 0.4).
    crop_min_scale: float | None = None
    # Gaussian blur in the views; None: off for images <= 64 px (SimCLR's CIFAR-10 setup), the recipe's above.
    blur: bool | None = None
    # Passes over the training data; the learning-rate and momentum schedules span them all.
    epochs: int = 100
    # Stop after this many steps (the schedules still span all epochs); None: run every epoch.
    max_steps: int | None = None
    # Global batch, split evenly over the processes; the learning rate follows it (base_lr x batch / 256).
    batch_size: int = 256
    # auto, lars, sgd (momentum 0.9) or adamw. auto: the paper's optimizer and rates from a batch of 1024 on (LARS for
    # SimCLR and BYOL, tuned for 4096; AdamW for DINO and MoCo v3 on a ViT, their papers' ViT recipe), below it the
    # method's short-run recipe for the backbone where it has one (selfsup's ResNets: SimCLR and BYOL SGD; a ViT:
    # SimCLR AdamW; chosen on held-out data, benchmarks/README.md); the choice is logged.
    optimizer: Literal["auto", "lars", "sgd", "adamw"] = "auto"
    # Learning rate per 256 images; None: the value that goes with the optimizer (auto's choice, else the method's
    # paper value, e.g. LARS: SimCLR 0.3, BYOL 0.2).
    base_lr: float | None = None
    # LARS's trust coefficient eta (both papers: 0.001).
    lars_trust_coefficient: float = 0.001
    # LARS: cap each layer's step at plain SGD's at the scheduled lr (solo-learn's CIFAR recipes, with eta 0.02).
    lars_clip: bool = False
    # Weight decay; None: the value that goes with the optimizer (as base_lr; e.g. LARS: SimCLR 1e-6, BYOL 1.5e-6).
    weight_decay: float | None = None
    # Epochs of linear learning-rate warmup before the cosine decay (both papers: 10), at most a tenth of the run's
    # steps (a short run still decays; the shortened warmup is logged).
    warmup_epochs: float = 10.0
    # fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # NHWC memory layout. None: on for CUDA (tensor-core convolutions want it), off on CPU, where it was 1.1-1.4x
    # faster for some shapes and 2.5x slower for others (16 px digits at width 1/4; benchmarks/README.md).
    channels_last: bool | None = None
    # Clip the gradients' global norm to this value; None: no clipping.
    grad_clip: float | None = None
    # A linear classifier trained on detached features during pretraining, when the data has labels.
    online_probe: bool = True
    # What a NaN or infinite loss does: stop (with the last good checkpoint named) or skip the step.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Epochs between kNN checks during training (0: only at the end).
    knn_every: int = 0
    # Neighbours of the weighted kNN classifier (Wu et al. 2018: 200).
    knn_k: int = 200
    # Temperature of the kNN classifier's weights (Wu et al. 2018: 0.1).
    knn_temperature: float = 0.1
    # The kNN / linear table (with random init and raw pixels) at the end, when there is a labelled test split.
    eval_at_end: bool = True
    # L-BFGS iterations of each linear-probe fit in the final table.
    linear_max_iter: int = 100
    # OUT/report.md with curves, monitors and an embedding map (needs matplotlib).
    report: bool = True
    # DataLoader workers for images streamed from disk.
    num_workers: int = 2
    # auto (the GPU when there is one), cpu, cuda or cuda:N.
    device: str = "auto"
    # Seed of the initial weights, the batches and every augmentation draw.
    seed: int = 0
    # Steps between rows of metrics.jsonl (loss, learning rate, momentum, collapse monitors).
    log_every: int = 10
    # Steps between checkpoints; 0: at the end of each epoch only.
    checkpoint_every_steps: int = 0
    # Newest checkpoints kept in OUT/checkpoints.
    keep_checkpoints: int = 3
    # Leave out unreadable images (listed in OUT/skipped_images.txt) instead of stopping.
    skip_bad_images: bool = False
    # Processes to start on this machine (one per GPU); torchrun does it when it launches selfsup.
    devices: int = 1
    # SyncBatchNorm with more than one process: BatchNorm statistics over the global batch.
    sync_batchnorm: bool = True
    # A progress bar on the terminal, over the whole run (every epoch's steps, or max_steps), with its ETA.
    progress: bool = True
    # TensorBoard event files in OUT/tensorboard beside metrics.jsonl (when TensorBoard is installed).
    tensorboard: bool = True
    # CPU threads of torch's operators in each process; None: torch's default (1 is often fastest on a busy
    # shared machine).
    threads: int | None = None

    def __post_init__(self) -> None:
        from selfsup.methods import method_class

        try:
            settings_class = method_class(self.method).Settings
        except ValueError as error:
            raise ConfigError(str(error)) from None
        object.__setattr__(self, "method_args", _method_settings(self.method, settings_class, self.method_args))
        object.__setattr__(self, "backbone_args", _backbone_settings(self))
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "knn_k": self.knn_k,
                    "log_every": self.log_every, "keep_checkpoints": self.keep_checkpoints,
                    "devices": self.devices, "linear_max_iter": self.linear_max_iter}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"setting '{name}' must be >= 1, got {value}")
        for name in ("width", "knn_temperature", "lars_trust_coefficient"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"setting '{name}' must be > 0, got {getattr(self, name)}")
        for name in ("image_size", "crop_size"):
            if getattr(self, name) is not None and getattr(self, name) < 8:
                raise ConfigError(f"setting '{name}' must be >= 8, got {getattr(self, name)}")
        if self.crop_min_scale is not None and not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"setting 'crop_min_scale' must be in (0, 1], got {self.crop_min_scale}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"setting 'max_steps' must be >= 1, got {self.max_steps}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"setting '{name}' must be >= 0, got {value}")
        if self.base_lr is not None and not self.base_lr > 0:
            raise ConfigError(f"setting 'base_lr' must be > 0, got {self.base_lr} (at 0 nothing trains)")
        if self.grad_clip == 0:
            raise ConfigError("setting 'grad_clip' must be > 0 (or none for no clipping), got 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"setting 'threads' must be >= 1 (or none for torch's default), got {self.threads}")
        if self.warmup_epochs < 0 or self.num_workers < 0 or self.knn_every < 0 or self.checkpoint_every_steps < 0:
            raise ConfigError("settings 'warmup_epochs', 'num_workers', 'knn_every' and "
                              "'checkpoint_every_steps' must be >= 0")


def _backbone_settings(config: PretrainConfig) -> dict[str, Any]:
    """Check the backbone's name (a torchvision or timm name must exist) and its arguments; ``backbone_args`` as
    a dict."""
    from selfsup.models.external import check_backbone_args, check_backbone_name

    try:
        check_backbone_name(config.backbone)
        args = check_backbone_args(config.backbone, config.backbone_args)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return args


def _method_settings(method: str, settings_class: type, values: Any) -> Any:
    """``values`` (None, a mapping, or a settings object) as an instance of the method's ``settings_class``."""
    if isinstance(values, settings_class):
        return values
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        raise ConfigError(f"setting 'method_args': a {type(values).__name__} was given for method '{method}', "
                          f"which takes a {settings_class.__name__}")
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"setting 'method_args': expected a mapping of the options of method '{method}', "
                          f"got {values!r}")
    known = field_types(settings_class)
    unknown = sorted(set(values) - set(known))
    if unknown:
        verb = "is not an option" if len(unknown) == 1 else "are not options"
        raise ConfigError(f"{', '.join(repr(k) for k in unknown)} {verb} of method '{method}'; its options: "
                          f"{', '.join(sorted(known))}")
    try:
        return from_dict(settings_class, values, source=f"method '{method}'")
    except ValueError as error:
        raise ConfigError(f"method '{method}': {error}") from None


def backbone_family(backbone: str) -> str | None:
    """"resnet" for selfsup's ResNets, "vit" for a plain vision transformer (torchvision:vit_*, timm:vit_* or
    timm:deit_*), else None: the families optimizer auto has short-run recipes for."""
    if ":" not in backbone:
        return "resnet"
    model = backbone.split(":", 1)[1].lower()
    return "vit" if model.startswith(("vit_", "deit_", "deit3_")) else None


# From this global batch on, optimizer auto takes the paper's recipe (LARS for SimCLR and BYOL: layer-wise rates
# are what lets their batches of 4096 train, You et al. 2017); below it the method's short-run recipe.
LARGE_BATCH = 1024


@dataclass(frozen=True)
class ResolvedHyperparameters:
    optimizer: str
    base_lr: float
    weight_decay: float
    # Why this optimizer, for the log (e.g. "auto: batch 128 < 1024, the short-run recipe").
    reason: str


def resolve(config: PretrainConfig) -> ResolvedHyperparameters:
    """The optimizer ``auto`` stands for and the ``None`` rates: the method's paper values for the optimizer, or
    with ``auto`` below :data:`LARGE_BATCH` its short-run recipe for the backbone's family
    (``Method.short_run_optimizer`` for selfsup's ResNets, ``Method.short_run_vit_optimizer`` for ViTs)."""
    from selfsup.methods import method_class

    method = method_class(config.method)
    name, reason = config.optimizer, "set in the configuration"
    # The short-run recipes were chosen on held-out data with selfsup's ResNets and with a ViT; other backbones
    # (ConvNeXt, Swin, ...) keep the paper's recipe until one is measured for them.
    family = backbone_family(config.backbone)
    recipe = {"resnet": method.short_run_optimizer, "vit": method.short_run_vit_optimizer}.get(family)
    if name == "auto" and config.batch_size < LARGE_BATCH and recipe is not None:
        name, lr, wd = recipe
        reason = (f"auto: batch {config.batch_size} < {LARGE_BATCH}, the method's short-run recipe"
                  + (" for ViTs" if family == "vit" else ""))
    else:
        if name == "auto":
            vit_recipe = family == "vit" and method.paper_vit_optimizer is not None
            name = method.paper_vit_optimizer if vit_recipe else method.paper_optimizer
            paper = "the paper's recipe for ViTs" if vit_recipe else "the paper's recipe"
            if config.batch_size >= LARGE_BATCH:
                reason = f"auto: batch {config.batch_size} >= {LARGE_BATCH}, {paper}"
            elif method.short_run_optimizer is None and method.short_run_vit_optimizer is None:
                reason = f"auto: {paper}"
            else:
                reason = f"auto: {paper} (no short-run recipe of {config.method} was measured on {config.backbone})"
        lr, wd = method.optimizer_defaults[name]
    return ResolvedHyperparameters(
        optimizer=name,
        base_lr=config.base_lr if config.base_lr is not None else lr,
        weight_decay=config.weight_decay if config.weight_decay is not None else wd,
        reason=reason,
    )


def changed_settings(saved: dict[str, Any], config: PretrainConfig) -> list[tuple[str, Any, Any]]:
    """The settings that differ between a checkpoint's saved config and ``config``, as (name, saved, current),
    leaving out :data:`HOW_TO_RUN`; the method's options are compared with their defaults filled in."""
    current = to_dict(config)
    if saved.get("method") != config.method:
        return [("method", saved.get("method"), config.method)]
    saved = upgrade_saved_config(saved)
    changes = []
    for name, value in current.items():
        if name in HOW_TO_RUN or name == "method_args":
            continue
        if name in saved and saved[name] != value:
            changes.append((name, saved[name], value))
    saved_args = to_dict(_method_settings(config.method, type(config.method_args), saved.get("method_args")))
    for name, value in current["method_args"].items():
        if saved_args.get(name) != value:
            changes.append((name, saved_args.get(name), value))
    return changes


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config saved before method options moved into ``method_args`` (top-level ``temperature``, ...), read
    as today's: those keys move into ``method_args``, so that old checkpoints resume and compare."""
    if "method_args" in saved:
        return saved
    from selfsup.methods import method_class

    try:
        options = set(field_types(method_class(saved.get("method", "")).Settings))
    except ValueError:
        return saved
    return {**{k: v for k, v in saved.items() if k not in options},
            "method_args": {k: v for k, v in saved.items() if k in options}}


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``selfsup eval`` (and of the evaluation at the end of pretraining)."""

    # The pretraining checkpoint or backbone.pt to evaluate (required).
    checkpoint: str | None = None
    # The labelled training data: the kNN bank and the linear probe's training set (see pretrain's --data).
    train_data: str = "digits"
    # The labelled test data; built-in data sets use their own test split.
    test_data: str | None = None
    # Folder for eval.json; none: the checkpoint's folder.
    out: str | None = None
    # Side the images are evaluated at; none: the checkpoint's, else 224.
    image_size: int | None = None
    # Neighbours of the weighted kNN classifier (Wu et al. 2018: 200).
    knn_k: int = 200
    # Temperature of the kNN classifier's weights (Wu et al. 2018: 0.1).
    knn_temperature: float = 0.1
    # L-BFGS iterations of each linear-probe fit.
    linear_max_iter: int = 100
    # Images per batch of feature extraction and fine-tuning.
    batch_size: int = 256
    # Also the same backbone at random init and raw pixels.
    baselines: bool = True
    # auto (the GPU when there is one), cpu, cuda or cuda:N.
    device: str = "auto"
    # Seed of the random-init baseline, the label fractions and fine-tuning.
    seed: int = 0
    # DataLoader workers for images read from disk.
    num_workers: int = 2
    # Leave out unreadable images instead of stopping.
    skip_bad_images: bool = False
    # Fractions of the training labels (class-balanced, drawn with seed) for the low-label table of linear
    # probe and fine-tuning, as the papers' semi-supervised tables use 0.01 and 0.1; 1.0 fine-tunes on all.
    low_label_fractions: tuple[float, ...] = ()
    # Epochs of fine-tuning in the low-label table.
    finetune_epochs: int = 30

    def __post_init__(self) -> None:
        for name in ("knn_k", "linear_max_iter", "batch_size", "finetune_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting '{name}' must be >= 1, got {getattr(self, name)}")
        for fraction in self.low_label_fractions:
            if not 0 < fraction <= 1:
                raise ConfigError(f"setting 'low_label_fractions': each fraction must be in (0, 1], got {fraction}")


@dataclass(frozen=True)
class ExportConfig:
    """Settings of ``selfsup export``."""

    # A pretraining checkpoint or backbone.pt (required).
    checkpoint: str | None = None
    # Where to write the backbone's state_dict (.pt) in its library's names, no classifier (required).
    output: str | None = None
