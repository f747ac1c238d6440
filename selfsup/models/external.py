"""Backbones from other libraries: any torchvision classification model (``torchvision:NAME``) or timm model
(``timm:NAME``), without its classifier: images (B, 3, H, W) -> pooled features (B, F).

The model is the library's own, built by its own builder with the run's keyword arguments
(``backbone_args``), so its weights keep the library's names and load back into
``torchvision.models.get_model(NAME, **backbone_args)`` or ``timm.create_model(NAME, **backbone_args)`` with
only the classifier missing. The classifier is replaced by ``nn.Identity`` and the feature size is read from
the model itself: the removed linear layer's ``in_features`` (torchvision: ``fc``, ``classifier[-1]``,
``head``, ``heads.head``), or timm's ``head_hidden_size`` / ``num_features`` after ``reset_classifier(0)``;
never from a trial forward pass or a hook. Nothing is downloaded: weights come from a local file
(:func:`load_backbone_weights`) or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.models.backbones import _RESNET_SPECS, ResNetBackbone

RESNET_NAMES = tuple(sorted(_RESNET_SPECS))
LIBRARIES = ("torchvision", "timm")
# Arguments that would fetch weights from the internet; selfsup takes weights from a local file instead.
_DOWNLOADING_ARGS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay")
# Where torchvision's classification models keep their classifier, in the order looked at.
_TORCHVISION_HEADS = ("heads.head", "fc", "head", "classifier")


def split_backbone_name(name: str) -> tuple[str | None, str]:
    """``"resnet18"`` -> ``(None, "resnet18")``; ``"timm:vit_tiny_patch16_224"`` -> ``("timm", ...)``."""
    library, colon, model_name = name.partition(":")
    if not colon:
        if name in RESNET_NAMES:
            return None, name
        raise ValueError(f"setting 'backbone': unknown backbone {name!r}; give {', '.join(RESNET_NAMES)} (selfsup's "
                         "ResNets), torchvision:NAME (any torchvision.models.list_models() name) or timm:NAME")
    if library not in LIBRARIES or not model_name:
        raise ValueError(f"setting 'backbone': {name!r} is not torchvision:NAME or timm:NAME")
    return library, model_name


def is_external(name: str) -> bool:
    """Whether backbone ``name`` is a torchvision or timm model (not one of selfsup's ResNets)."""
    return split_backbone_name(name)[0] is not None


def _import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise ValueError(f"setting 'backbone': {name} needs timm (pip install 'selfsup[timm]')") from None
    return timm


def check_backbone_name(name: str) -> None:
    """Raise ValueError, naming the setting and how to list the names, unless ``name`` is a known backbone."""
    library, model_name = split_backbone_name(name)
    if library == "torchvision":
        import torchvision

        if model_name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"setting 'backbone': {model_name!r} is not a torchvision classification model; list "
                             "them with python -c 'import torchvision; print(torchvision.models.list_models("
                             "module=torchvision.models))'")
    elif library == "timm":
        timm = _import_timm(name)
        if not timm.is_model(model_name):
            raise ValueError(f"setting 'backbone': {model_name!r} is not a timm model; list them with python -c "
                             f"'import timm; print(timm.list_models(\"{model_name[:4]}*\"))'")


def check_backbone_args(name: str, args: Any) -> dict[str, Any]:
    """``args`` as a plain dict of keyword arguments (names to YAML values); ValueError naming the setting."""
    args = {} if args is None else args
    if not isinstance(args, dict) or not all(isinstance(key, str) and key.isidentifier() for key in args):
        raise ValueError(f"setting 'backbone_args': expected a mapping of keyword arguments (name: value), "
                         f"got {args!r}")
    downloading = sorted(set(args) & set(_DOWNLOADING_ARGS))
    if downloading:
        raise ValueError(f"setting 'backbone_args': {', '.join(downloading)} would download weights; selfsup "
                         "downloads nothing: give a local file as setting 'backbone_weights'")
    if args and not is_external(name):
        raise ValueError(f"setting 'backbone_args' is for torchvision:NAME and timm:NAME backbones; {name} takes "
                         f"'width' and 'cifar_stem' (torchvision:{name} is torchvision's own builder)")
    return dict(args)


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        model = getattr(model, part, None)
        if not isinstance(model, nn.Module):
            return None
    return model


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _remove_torchvision_classifier(model: nn.Module, name: str) -> tuple[int, tuple[str, ...]]:
    """Replace the classifier's last linear layer (and a dropout just before it, the classifier's own) by
    ``nn.Identity``; return its ``in_features`` (the feature size) and the dotted paths replaced."""
    for path in _TORCHVISION_HEADS:
        head = _submodule(model, path)
        if isinstance(head, nn.Linear):
            _set_submodule(model, path, nn.Identity())
            return head.in_features, (path,)
        if isinstance(head, nn.Sequential):
            linear = [i for i, layer in enumerate(head) if isinstance(layer, nn.Linear)]
            if not linear or linear[-1] != len(head) - 1:
                continue
            last = linear[-1]
            removed = [last - 1] if last > 0 and isinstance(head[last - 1], nn.Dropout) else []
            features = head[last].in_features
            for index in removed + [last]:
                head[index] = nn.Identity()
            return features, tuple(f"{path}.{index}" for index in removed + [last])
    raise ValueError(f"setting 'backbone': torchvision:{name} has no linear classifier at "
                     f"{', '.join(_TORCHVISION_HEADS)} (its last layer is not nn.Linear), so selfsup cannot take "
                     "its features; choose another model")


def _build(library: str, model_name: str, args: dict[str, Any]) -> tuple[nn.Module, int, tuple[str, ...]]:
    """The library's model without its classifier, its feature size and the classifier's dotted paths."""
    full_name = f"{library}:{model_name}"
    try:
        if library == "torchvision":
            import torchvision

            model = torchvision.models.get_model(model_name, weights=None, **args)
        else:
            model = _import_timm(full_name).create_model(model_name, pretrained=False, **args)
    except TypeError as error:  # an argument the builder does not take
        raise ValueError(f"setting 'backbone_args': {full_name} does not take {args}: {error}") from None
    if library == "torchvision":
        if getattr(model, "aux_logits", False):
            raise ValueError(f"setting 'backbone_args': torchvision:{model_name} has auxiliary classifiers, which "
                             "return several outputs in training; give --backbone-args aux_logits=false")
        feature_dim, classifier = _remove_torchvision_classifier(model, model_name)
        return model, feature_dim, classifier
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    classifier = tuple(path for path, module in model.named_modules() if any(module is h for h in heads))
    model.reset_classifier(0)
    # head_hidden_size (timm >= 1.0): the pooled features' size where a pre-logits layer follows num_features.
    feature_dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(feature_dim), classifier


class ExternalBackbone(nn.Module):
    """A torchvision or timm model without its classifier: images (B, 3, H, W) -> features (B, ``feature_dim``).

    Args:
        name: ``"torchvision:NAME"`` or ``"timm:NAME"``.
        backbone_args: keyword arguments of the library's builder (``image_size=32`` for torchvision's ViTs,
            ``img_size=32, patch_size=4`` for timm's).
        seed: the run's seed. In training mode the model's own randomness (dropout, stochastic depth) is drawn
            from a generator seeded by the seed and the number of training forwards so far, a count carried in
            the state dict: a resumed run draws what an uninterrupted one draws, as the views do.

    ``model`` is the library's module (its classifier ``nn.Identity``); ``classifier`` names the removed
    layers, whose weights a library state dict has and this one lacks.
    """

    def __init__(self, name: str, backbone_args: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__()
        library, model_name = split_backbone_name(name)
        if library is None:
            raise ValueError(f"setting 'backbone': {name} is a selfsup ResNet (ResNetBackbone), not torchvision:NAME "
                             "or timm:NAME")
        check_backbone_name(name)
        self.name, self.library, self.model_name = name, library, model_name
        self.backbone_args = check_backbone_args(name, backbone_args)
        self.seed = seed
        self.model, self.feature_dim, self.classifier = _build(library, model_name, self.backbone_args)
        self.training_forwards = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._features(images)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.seed * 0x9E3779B97F4A7C15 + self.training_forwards) % 2**63)
            self.training_forwards += 1
            return self._features(images)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return torch.flatten(self.model(images), 1)
        except RuntimeError as error:  # a network too deep for the images: its downsampling runs out of pixels
            if not any(text in str(error) for text in _TOO_SMALL):
                raise
            raise ValueError(f"setting 'image_size': {self.name} cannot take {images.shape[-2]}x{images.shape[-1]} "
                             f"px images, its downsampling leaves fewer pixels than a kernel needs ({error}); give "
                             "--image-size (and --crop-size) a larger side") from None

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.training_forwards, dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.training_forwards = int(state)

    def library_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the library's names, without the classifier (a copy)."""
        return {key: value.detach().clone() for key, value in self.model.state_dict().items()}

    def library_loader(self, path: str) -> str:
        """One line of Python that loads a :meth:`library_state_dict` saved at ``path`` into the library's model."""
        args = "".join(f", {key}={value!r}" for key, value in self.backbone_args.items())
        build = (f"import torch, torchvision; model = torchvision.models.get_model({self.model_name!r}{args})"
                 if self.library == "torchvision" else
                 f"import torch, timm; model = timm.create_model({self.model_name!r}{args})")
        return f"{build}; model.load_state_dict(torch.load({str(path)!r}, weights_only=True), strict=False)"


# What torch's convolutions and pools say when their input has become smaller than their kernel.
_TOO_SMALL = ("Kernel size can't be greater than actual input size", "Output size is too small")


def fixed_input_size(backbone: nn.Module) -> int | None:
    """The one image side a backbone accepts, where its model fixes it (ViTs' position embeddings), else None."""
    model = getattr(backbone, "model", None)
    if model is None:
        return None
    size = getattr(model, "image_size", None)  # torchvision's VisionTransformer
    if isinstance(size, int):
        return size
    patch_embed = getattr(model, "patch_embed", None)  # timm: strict unless dynamic_img_size / dynamic_img_pad
    if patch_embed is not None and getattr(patch_embed, "strict_img_size", False) and \
            not getattr(model, "dynamic_img_size", False):
        size = getattr(patch_embed, "img_size", None)
        if isinstance(size, (tuple, list)) and len(set(size)) == 1:
            return int(size[0])
    return None


def check_input_size(backbone: nn.Module, image_size: int, crop_size: int) -> None:
    """ValueError naming the setting when the model accepts one image side and the run feeds another."""
    fixed = fixed_input_size(backbone)
    if fixed is None or fixed == image_size == crop_size:
        return
    argument = "image_size" if backbone.library == "torchvision" else "img_size"
    fix = f"give --backbone-args {argument}={image_size}" + ("" if crop_size == image_size else
                                                            f" and --crop-size {image_size}")
    if backbone.library == "timm":
        fix += " (or dynamic_img_size=true)"
    raise ValueError(f"setting 'backbone_args': {backbone.name} takes {fixed} px images only, the run feeds "
                     f"{image_size} px images (image_size) and {crop_size} px crops (crop_size); {fix}")


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    content = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(content, dict) and "backbone" in content and "backbone_config" in content:  # a selfsup file
        content = content["backbone"]
        prefix = "model." if any(key.startswith("model.") for key in content) else "resnet."
        content = {key.removeprefix(prefix): value for key, value in content.items() if key != "_extra_state"}
    if not isinstance(content, dict) or not all(isinstance(value, torch.Tensor) for value in content.values()):
        raise ValueError(f"setting 'backbone_weights': {path} is not a state dict (names -> tensors)")
    return content


def _examples(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local state dict under the library's names (torchvision's for a ResNetBackbone) into
    ``backbone``, ignoring the classifier's weights; anything else missing, unexpected or of another shape is
    a ValueError naming the setting (``torch.load(weights_only=True)``: a file carrying code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"setting 'backbone_weights': file not found: {path}")
    weights = _load_state_dict_file(path)
    if isinstance(backbone, ResNetBackbone):
        module, classifier, what = backbone.resnet, ("fc",), f"{backbone.name} (width {backbone.width:g}" + (
            ", CIFAR stem)" if backbone.cifar_stem else ")")
    else:
        module, classifier, what = backbone.model, backbone.classifier, backbone.name
    weights = {key: value for key, value in weights.items()
               if not any(key == c or key.startswith(c + ".") for c in classifier)}
    own = module.state_dict()
    problems = []
    if missing := set(own) - set(weights):
        problems.append(f"{len(missing)} weights missing ({_examples(missing)})")
    if unexpected := set(weights) - set(own):
        problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    if reshaped := [key for key in set(own) & set(weights) if own[key].shape != weights[key].shape]:
        key = sorted(reshaped)[0]
        problems.append(f"{len(reshaped)} of other shapes (e.g. {key}: file {tuple(weights[key].shape)}, model "
                        f"{tuple(own[key].shape)})")
    if problems:
        raise ValueError(f"setting 'backbone_weights': {path} does not fit {what}: {'; '.join(problems)}")
    module.load_state_dict(weights, strict=True)


def resnet_body(backbone: nn.Module) -> nn.Module | None:
    """The torchvision ResNet inside ``backbone`` (stages ``layer1..4``) for detection and segmentation heads, or
    None when it is not one."""
    from torchvision.models.resnet import ResNet

    if isinstance(backbone, ResNetBackbone):
        return backbone.resnet
    model = getattr(backbone, "model", None)
    return model if isinstance(model, ResNet) else None


def export_description(backbone: nn.Module, path: str | Path) -> str:
    """What ``selfsup export`` wrote at ``path`` and the one line of Python that loads it."""
    path = str(path)
    if isinstance(backbone, ExternalBackbone):
        missing = ", ".join(f"{c}.*" for c in backbone.classifier)
        return (f"a {backbone.library} state_dict of {backbone.model_name} (only the classifier, {missing}, is "
                f"missing); load with: {backbone.library_loader(path)}")
    if backbone.width == 1.0 and not backbone.cifar_stem:
        return (f"a torchvision state_dict of {backbone.name} (only fc is missing); load with: import torch, "
                f"torchvision; torchvision.models.{backbone.name}().load_state_dict(torch.load({path!r}, "
                "weights_only=True), strict=False)")
    differences = [f"width {backbone.width:g}"] if backbone.width != 1.0 else []
    differences += ["a CIFAR stem (3x3 stride-1 conv1, no max-pool)"] if backbone.cifar_stem else []
    return (f"NOT a torchvision ResNet: a selfsup {backbone.name} with {' and '.join(differences)}, which does not "
            f"load into torchvision.models.{backbone.name}(); load with: import torch; from selfsup.models import "
            f"ResNetBackbone; ResNetBackbone({backbone.name!r}, cifar_stem={backbone.cifar_stem}, "
            f"width={backbone.width:g}).resnet.load_state_dict(torch.load({path!r}, weights_only=True))")


def export_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The weights ``selfsup export`` writes: the library's names, no classifier."""
    if isinstance(backbone, ExternalBackbone):
        return backbone.library_state_dict()
    return backbone.torchvision_state_dict()

