"""Backbones (torchvision ResNets without classifier, CIFAR stem, width) and the MLP heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from selfsup.models import (
    ResNetBackbone,
    build_torchvision_resnet,
    byol_prediction_head,
    byol_projection_head,
    mlp,
    simclr_projection_head,
)

PAPER_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_width_one_matches_torchvision_architecture(name: str) -> None:
    backbone = ResNetBackbone(name)
    assert backbone.feature_dim == PAPER_FEATURE_DIMS[name]
    reference = getattr(tv_resnet, name)(weights=None)
    reference_shapes = {key: value.shape for key, value in reference.state_dict().items()
                        if not key.startswith("fc.")}
    ours = {key: value.shape for key, value in backbone.torchvision_state_dict().items()}
    assert ours == reference_shapes


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("width", [0.125, 0.5])
def test_feature_dim_scales_with_width(name: str, width: float) -> None:
    assert ResNetBackbone(name, width=width).feature_dim == int(PAPER_FEATURE_DIMS[name] * width)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_forward_gives_pooled_features(name: str, cifar_stem: bool) -> None:
    torch.manual_seed(0)
    backbone = ResNetBackbone(name, cifar_stem=cifar_stem, width=0.125)
    features = backbone(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, backbone.feature_dim)
    assert torch.isfinite(features).all()


def test_cifar_stem_keeps_resolution() -> None:
    plain = ResNetBackbone("resnet18", width=0.125)
    cifar = ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    assert plain.resnet.conv1.kernel_size == (7, 7) and plain.resnet.conv1.stride == (2, 2)
    assert isinstance(plain.resnet.maxpool, nn.MaxPool2d)
    assert cifar.resnet.conv1.kernel_size == (3, 3) and cifar.resnet.conv1.stride == (1, 1)
    assert isinstance(cifar.resnet.maxpool, nn.Identity)
    images = torch.randn(2, 3, 32, 32)
    # layer1 sees 32x32 with the CIFAR stem, 8x8 with the ImageNet one.
    stem_outputs = {}
    for label, backbone in (("plain", plain), ("cifar", cifar)):
        resnet = backbone.resnet
        stem_outputs[label] = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    assert stem_outputs["plain"].shape[-2:] == (8, 8) and stem_outputs["cifar"].shape[-2:] == (32, 32)


@pytest.mark.parametrize(("name", "cifar_stem"),
                         [("resnet18", False), ("resnet18", True), ("resnet50", False)])
def test_torchvision_state_dict_loads_into_torchvision_model(name: str, cifar_stem: bool) -> None:
    torch.manual_seed(0)
    backbone = ResNetBackbone(name, cifar_stem=cifar_stem)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode exercises the buffers too
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model = build_torchvision_resnet(name, cifar_stem=cifar_stem)
    result = model.load_state_dict(backbone.torchvision_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    model.fc = nn.Identity()
    backbone.eval()
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone(images))


def test_torchvision_state_dict_is_a_copy() -> None:
    backbone = ResNetBackbone("resnet18", width=0.125)
    state = backbone.torchvision_state_dict()
    state["conv1.weight"].zero_()
    assert backbone.resnet.conv1.weight.abs().sum() > 0


def test_build_torchvision_resnet_num_classes() -> None:
    model = build_torchvision_resnet("resnet18", num_classes=10)
    assert model.fc.out_features == 10


def test_backbone_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="resnet101"):
        ResNetBackbone("resnet101")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        ResNetBackbone("resnet18", width=0.0)


# ---------------------------------------------------------------- heads


def _describe(head: nn.Sequential) -> list[tuple]:
    """Each layer as (kind, sizes..., has bias) for Linear, (kind, features) for BatchNorm."""
    described = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            described.append(("linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, nn.BatchNorm1d):
            described.append(("bn", layer.num_features))
        elif isinstance(layer, nn.ReLU):
            described.append(("relu",))
        else:
            described.append((type(layer).__name__,))
    return described


def test_simclr_projection_head_paper_dims() -> None:
    assert _describe(simclr_projection_head(2048)) == [
        ("linear", 2048, 2048, False), ("bn", 2048), ("relu",), ("linear", 2048, 128, True),
    ]


def test_byol_heads_paper_dims() -> None:
    assert _describe(byol_projection_head(2048)) == [
        ("linear", 2048, 4096, False), ("bn", 4096), ("relu",), ("linear", 4096, 256, True),
    ]
    assert _describe(byol_prediction_head()) == [
        ("linear", 256, 4096, False), ("bn", 4096), ("relu",), ("linear", 4096, 256, True),
    ]


def test_head_dims_are_configurable() -> None:
    assert _describe(simclr_projection_head(64, 32, 16)) == [
        ("linear", 64, 32, False), ("bn", 32), ("relu",), ("linear", 32, 16, True),
    ]
    assert _describe(byol_projection_head(64, 32, 8))[-1] == ("linear", 32, 8, True)
    assert _describe(byol_prediction_head(8, 32, 8))[0] == ("linear", 8, 32, False)


def test_mlp_variants() -> None:
    assert _describe(mlp([8, 16, 16, 4])) == [
        ("linear", 8, 16, False), ("bn", 16), ("relu",),
        ("linear", 16, 16, False), ("bn", 16), ("relu",),
        ("linear", 16, 4, True),
    ]
    assert _describe(mlp([8, 16, 4], batch_norm=False)) == [
        ("linear", 8, 16, True), ("relu",), ("linear", 16, 4, True),
    ]
    assert _describe(mlp([8, 4], last_batch_norm=True)) == [("linear", 8, 4, False), ("bn", 4)]
    head = mlp([8, 16, 4])
    assert head(torch.randn(5, 8)).shape == (5, 4)


@pytest.mark.parametrize(("dims", "message"), [([8], "at least"), ([], "at least"), ([8, 0, 4], "positive"),
                                               ([8, 16, -1], "positive")])
def test_mlp_rejects_bad_dims(dims: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mlp(dims)
