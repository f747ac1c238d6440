"""Keras encoders and heads, the twins of :mod:`selfsup.models.backbones` and :mod:`selfsup.models.heads`.

An encoder maps images (B, H, W, 3), channels last, to pooled features (B, F); its feature size is
``encoder.output_shape[-1]``. BatchNormalization layers use PyTorch's conventions: epsilon 1e-5 and
a running-statistics momentum of 0.1 (Keras's ``momentum=0.9`` is the weight of the old value).
One difference remains: Keras updates the running variance with the biased batch variance,
PyTorch with the unbiased one (a factor n/(n-1) on the update, 1.002 at a batch of 512 views).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import keras
import numpy as np
from keras import layers

from selfsup.data.images import SMALL_IMAGE_SIDE

EncoderName = Literal["resnet18", "resnet50"]

BATCH_NORM_MOMENTUM = 0.9  # torch.nn.BatchNorm's momentum=0.1
BATCH_NORM_EPSILON = 1e-5  # torch.nn.BatchNorm's eps

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"), torchvision's ResNet init.
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}


def _batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, name=name)


def _conv(filters: int, kernel_size: int, stride: int, name: str) -> layers.Conv2D:
    # "valid" after explicit symmetric padding: Keras's "same" pads stride-2 inputs on one side only,
    # PyTorch's padding=k//2 on both, and the two would sample different pixels.
    return layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False,
                         kernel_initializer=keras.initializers.get(_CONV_INIT), name=name)


def _padded_conv(x, filters: int, kernel_size: int, stride: int, name: str):
    if kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    return _conv(filters, kernel_size, stride, name)(x)


def _basic_block(x, planes: int, stride: int, name: str):
    """torchvision's BasicBlock: two 3x3 convolutions, a 1x1 projection shortcut when the shape changes."""
    shortcut = x
    y = _padded_conv(x, planes, 3, stride, f"{name}_conv1")
    y = layers.ReLU(name=f"{name}_relu1")(_batch_norm(f"{name}_bn1")(y))
    y = _padded_conv(y, planes, 3, 1, f"{name}_conv2")
    y = _batch_norm(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != planes:
        shortcut = _conv(planes, 1, stride, f"{name}_downsample_conv")(x)
        shortcut = _batch_norm(f"{name}_downsample_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def resnet18(image_size: int | None = None, width: float = 1.0, cifar_stem: bool | None = None,
             name: str = "resnet18") -> keras.Model:
    """ResNet-18 (He et al. 2016) as torchvision builds it, with every stage's width times ``width``:
    images (B, S, S, 3) -> features (B, 512 x width).

    Args:
        image_size: input side (None accepts any size).
        width: multiplier on every stage's channels, as :class:`selfsup.models.backbones.ResNetBackbone`
            (1.0 = the paper's network; smaller values train in minutes on a CPU).
        cifar_stem: a 3x3 stride-1 first convolution and no max-pool, as in SimCLR's CIFAR-10
            experiments (Chen et al. 2020, appendix B.9); by default on for images of 64 px or less.
    """
    if not width > 0:
        raise ValueError(f"resnet18: width must be > 0, got {width}")
    if cifar_stem is None:
        cifar_stem = image_size is not None and image_size <= SMALL_IMAGE_SIDE
    planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
    inputs = keras.Input((image_size, image_size, 3), name="images")
    if cifar_stem:
        x = _padded_conv(inputs, planes[0], 3, 1, "stem_conv")
    else:
        x = _padded_conv(inputs, planes[0], 7, 2, "stem_conv")
    x = layers.ReLU(name="stem_relu")(_batch_norm("stem_bn")(x))
    if not cifar_stem:
        # Zero padding equals PyTorch's -inf padding here: the inputs are >= 0 after the ReLU.
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, stage_planes in enumerate(planes):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, stage_planes, stride, name=f"layer{stage + 1}_{block}")
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, features, name=name)


def resnet50(image_size: int = 224, name: str = "resnet50") -> keras.Model:
    """Keras's ResNet-50 (``keras.applications.ResNet50``, ``weights=None``, no top, average pooling):
    images (B, S, S, 3) -> features (B, 2048); S >= 32.

    Its BatchNormalization layers are set to PyTorch's momentum and epsilon. Unlike torchvision's
    ResNet-50 (v1.5), Keras's strides in the first 1x1 convolution of a bottleneck (v1) and its
    convolutions carry biases.
    """
    model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                        input_shape=(image_size, image_size, 3), name=name)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum, layer.epsilon = BATCH_NORM_MOMENTUM, BATCH_NORM_EPSILON
    return model


def build_encoder(name: EncoderName, image_size: int, width: float = 1.0,
                  cifar_stem: bool | None = None) -> keras.Model:
    """``"resnet18"`` (any width, CIFAR stem by default at <= 64 px) or ``"resnet50"`` (Keras's, width 1)."""
    if name == "resnet18":
        return resnet18(image_size, width=width, cifar_stem=cifar_stem)
    if name == "resnet50":
        if width != 1.0 or cifar_stem:
            raise ValueError("the Keras resnet50 encoder has width 1.0 and the ImageNet stem only")
        return resnet50(image_size)
    raise ValueError(f"unknown TensorFlow encoder {name!r}; choose resnet18 or resnet50")


def _torch_linear_initializers(fan_in: int) -> tuple[keras.initializers.Initializer, ...]:
    # nn.Linear's default init: weights and bias uniform in +-1/sqrt(fan_in)
    # (kaiming_uniform with a=sqrt(5) is VarianceScaling with scale 1/3).
    bound = 1.0 / math.sqrt(fan_in)
    return (keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform"),
            keras.initializers.RandomUniform(-bound, bound))


def mlp(dims: Sequence[int], batch_norm: bool = True, last_batch_norm: bool = False,
        name: str = "mlp") -> keras.Sequential:
    """Dense layers through ``dims`` = (in, hidden..., out), BatchNorm + ReLU between them, as
    :func:`selfsup.models.heads.mlp`: no ReLU after the last layer (BatchNorm only with
    ``last_batch_norm``), no bias on a layer followed by BatchNorm. Layer names follow the PyTorch
    ``nn.Sequential`` indices (``linear0``, ``bn1``, ``relu2``, ...)."""
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got dims={list(dims)}")
    if any(d < 1 for d in dims):
        raise ValueError(f"MLP sizes must be positive, got dims={list(dims)}")
    stack: list[layers.Layer] = [keras.Input((dims[0],))]
    index = 0
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        is_last = i == len(dims) - 2
        with_bn = batch_norm and (not is_last or last_batch_norm)
        kernel_init, bias_init = _torch_linear_initializers(d_in)
        stack.append(layers.Dense(d_out, use_bias=not with_bn, kernel_initializer=kernel_init,
                                  bias_initializer=bias_init, name=f"linear{index}"))
        index += 1
        if with_bn:
            stack.append(_batch_norm(f"bn{index}"))
            index += 1
        if not is_last:
            stack.append(layers.ReLU(name=f"relu{index}"))
            index += 1
    return keras.Sequential(stack, name=name)


def simclr_projection_head(input_dim: int, hidden_dim: int = 2048, output_dim: int = 128) -> keras.Sequential:
    """SimCLR's g(.): Dense (no bias) -> BN -> ReLU -> Dense (Chen et al. 2020, sec. 2.1 and B.9), as
    :func:`selfsup.models.heads.simclr_projection_head`: hidden 2048, output 128."""
    return mlp([input_dim, hidden_dim, output_dim], name="projection_head")


def _keras_weights_of_torch_layer(layer: layers.Layer, prefix: str, state_dict: Mapping[str, Any]) -> list:
    def get(name: str) -> np.ndarray:
        key = f"{prefix}.{name}"
        if key not in state_dict:
            raise ValueError(f"PyTorch state dict has no {key!r} for Keras layer {layer.name!r}")
        return np.asarray(state_dict[key], dtype=np.float32)

    if isinstance(layer, layers.Conv2D):  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
        return [get("weight").transpose(2, 3, 1, 0)] + ([get("bias")] if layer.use_bias else [])
    if isinstance(layer, layers.Dense):  # torch (out, in) -> Keras (in, out)
        return [get("weight").T] + ([get("bias")] if layer.use_bias else [])
    if isinstance(layer, layers.BatchNormalization):
        return [get("weight"), get("bias"), get("running_mean"), get("running_var")]
    raise TypeError(f"no PyTorch counterpart known for Keras layer {layer.name!r}")


def load_torch_weights(model: keras.Model, state_dict: Mapping[str, Any],
                       torch_names: Mapping[str, str]) -> None:
    """Copy PyTorch weights (a state dict of numpy arrays) into the Keras ``model``; ``torch_names``
    maps each Keras layer name with weights to its PyTorch module prefix. Every weighted Keras layer
    must be named there, and every PyTorch parameter or buffer (but ``num_batches_tracked``) used."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in torch_names:
            raise ValueError(f"Keras layer {layer.name!r} has no PyTorch counterpart in the mapping")
        prefix = torch_names[layer.name]
        layer.set_weights(_keras_weights_of_torch_layer(layer, prefix, state_dict))
        used.update(key for key in state_dict if key.rsplit(".", 1)[0] == prefix)
    unused = sorted(key for key in state_dict if key not in used and not key.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"PyTorch weights left unused: {unused[:5]}{' ...' if len(unused) > 5 else ''}")


def torch_mlp_names(model: keras.Sequential) -> dict[str, str]:
    """Keras layer names of :func:`mlp` -> module prefixes of :func:`selfsup.models.heads.mlp`."""
    # Layers are named by their nn.Sequential index: linear0, bn1, relu2, linear3, ...
    return {layer.name: layer.name.removeprefix("linear").removeprefix("bn") for layer in model.layers
            if layer.weights}


def torch_resnet18_names(model: keras.Model, prefix: str = "resnet") -> dict[str, str]:
    """Keras layer names of :func:`resnet18` -> module prefixes of
    :class:`selfsup.models.backbones.ResNetBackbone` (``resnet.conv1``, ``resnet.layer2.0.downsample.0``)."""
    names = {"stem_conv": f"{prefix}.conv1", "stem_bn": f"{prefix}.bn1"}
    for layer in model.layers:
        if layer.name.startswith("layer") and layer.weights:
            stage, block, part = layer.name.split("_", 2)
            torch_part = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(part, part)
            names[layer.name] = f"{prefix}.{stage}.{block}.{torch_part}"
    return names
