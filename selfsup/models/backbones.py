"""Backbones: networks that map images (B, 3, H, W) to pooled features (B, F).

A backbone is any ``nn.Module`` returning (B, F) features; its feature size is given explicitly
(``feature_dim``), never found by a mock forward pass or a hook.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

ResNetName = Literal["resnet18", "resnet34", "resnet50"]

_RESNET_SPECS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}


class _ScaledResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage's width multiplied by ``width`` (1.0 = the original).

    Built from torchvision's own blocks and ``_make_layer``, so parameter names match
    ``torchvision.models.resnetXX`` and a width-1.0 state dict loads into it.
    """

    def __init__(self, block: type[nn.Module], layers: list[int], width: float) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.feature_dim = planes[3] * block.expansion


class ResNetBackbone(nn.Module):
    """A torchvision ResNet-18/34/50 without its classifier: images (B, 3, H, W) -> features (B, F).

    Args:
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        cifar_stem: replace the 7x7 stride-2 convolution and the max-pool by a 3x3 stride-1
            convolution and no pooling, as in SimCLR's CIFAR-10 experiments (Chen et al. 2020,
            appendix B.9): for images of 64 px or less, where the ImageNet stem would shrink a
            32 px image to 8 px before the first stage.
        width: multiplier on every stage's channels (1.0 = the paper's network); smaller values
            give models that train in minutes on a CPU.
    """

    def __init__(self, name: ResNetName = "resnet18", cifar_stem: bool = False, width: float = 1.0) -> None:
        super().__init__()
        if name not in _RESNET_SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_RESNET_SPECS)}")
        if not width > 0:
            raise ValueError(f"backbone width must be > 0, got {width}")
        block, layers = _RESNET_SPECS[name]
        self.name, self.cifar_stem, self.width = name, cifar_stem, width
        self.resnet = _ScaledResNet(block, layers, width)
        if cifar_stem:
            stem_channels = self.resnet.conv1.out_channels
            self.resnet.conv1 = nn.Conv2d(3, stem_channels, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.resnet.maxpool = nn.Identity()
        self.feature_dim: int = self.resnet.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.resnet(images), 1)

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under torchvision's parameter names (no ``fc``), for ``torchvision.models.resnetXX``.

        With ``cifar_stem=True`` the receiving model needs the same stem: a 3x3 stride-1 ``conv1`` and
        ``maxpool = nn.Identity()``.
        """
        return {key: value.detach().clone() for key, value in self.resnet.state_dict().items()}


def backbone_config(backbone: nn.Module) -> dict:
    """What rebuilds ``backbone`` (checkpoints carry it): ``{"name", "cifar_stem", "width"}`` for a ResNetBackbone,
    ``{"name", "backbone_args"}`` for a torchvision or timm model (``selfsup.models.external.ExternalBackbone``)."""
    if not isinstance(backbone, ResNetBackbone):
        return {"name": backbone.name, "backbone_args": dict(backbone.backbone_args)}
    return {"name": backbone.name, "cifar_stem": backbone.cifar_stem, "width": backbone.width}


def build_torchvision_resnet(name: ResNetName, cifar_stem: bool = False, num_classes: int = 1000) -> nn.Module:
    """The plain torchvision model matching a width-1.0 :class:`ResNetBackbone`, ready for its weights."""
    model = getattr(tv_resnet, name)(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model
