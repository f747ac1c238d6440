"""Transfer to semantic segmentation: an FCN (Long et al. 2015) or DeepLabV3 (Chen et al. 2017) head
from torchvision on a selfsup ResNet, fine-tuned end to end; scored by mIoU and pixel accuracy.

    ResNet (layer3, layer4 dilated: output stride 8) ─ head ─ logits, upsampled to the image size

The stride-to-dilation change is torchvision's ``replace_stride_with_dilation=[False, True, True]``
(its fcn_resnet50 and deeplabv3_resnet50), applied after the fact so that pretrained weights, whose
shapes it leaves unchanged, still fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCN, FCNHead

from selfsup.data.annotations import TransformedDataset
from selfsup.devices import resolve_device
from selfsup.eval.supervised import SupervisedStep
from selfsup.eval.transfer_settings import SegmentationSettings
from selfsup.models.backbones import ResNetBackbone
from selfsup.schedules import scaled_learning_rate

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IGNORE_INDEX = 255  # mask value left out of the loss and the metrics (PASCAL VOC's convention)


def dilate_resnet_(resnet: nn.Module, output_stride: int) -> None:
    """Trade the stride of the last one (16) or two (8) stages for dilation, in place.

    As torchvision's ResNet does with ``replace_stride_with_dilation``: a dilated stage's first block
    keeps the previous dilation, the others take the new one.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    stages = {32: [], 16: [resnet.layer4], 8: [resnet.layer3, resnet.layer4]}[output_stride]
    dilation = 1
    for stage in stages:
        previous_dilation, dilation = dilation, dilation * 2
        for index, block in enumerate(stage):
            block_dilation = previous_dilation if index == 0 else dilation
            for module in block.modules():
                if not isinstance(module, nn.Conv2d):
                    continue
                module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation = (block_dilation, block_dilation)
                    module.padding = (block_dilation, block_dilation)


def _stage_out_channels(stage: nn.Sequential) -> int:
    last_block = stage[-1]
    return (last_block.conv3 if hasattr(last_block, "conv3") else last_block.conv2).out_channels


def build_segmenter(backbone: ResNetBackbone, num_classes: int,
                    head: Literal["fcn", "deeplabv3"] = "fcn", output_stride: int = 8,
                    aux_loss: bool = False) -> nn.Module:
    """torchvision's FCN or DeepLabV3 over ``backbone.resnet`` (changed in place by the dilation).

    The model maps normalized images (B, 3, H, W) to ``{"out": logits (B, num_classes, H, W)}`` (and
    ``"aux"``, from layer3, with ``aux_loss``).
    """
    from selfsup.models.external import resnet_body

    resnet = resnet_body(backbone)
    if resnet is None:
        raise ValueError(f"transfer segment: backbone {getattr(backbone, 'name', type(backbone).__name__)} is not a "
                         "ResNet; FCN / DeepLabV3 is built here over a ResNet's four stages (resnet18/34/50, or "
                         "torchvision:resnet*, resnext*, wide_resnet*)")
    dilate_resnet_(resnet, output_stride)
    return_layers = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    body = IntermediateLayerGetter(resnet, return_layers=return_layers)
    channels = _stage_out_channels(resnet.layer4)
    aux_head = FCNHead(_stage_out_channels(resnet.layer3), num_classes) if aux_loss else None
    if head == "fcn":
        return FCN(body, FCNHead(channels, num_classes), aux_head)
    if head == "deeplabv3":
        return DeepLabV3(body, DeepLabHead(channels, num_classes), aux_head)
    raise ValueError(f"segmentation head must be 'fcn' or 'deeplabv3', got {head!r}")


def _normalize(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float() / 255 - mean) / std


def _resize_short_side(image: torch.Tensor, mask: torch.Tensor | None, short_side: int):
    height, width = image.shape[-2:]
    scale = short_side / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                          antialias=True)[0]
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


class SegmentationTrainTransform:
    """Random scale (short side ``image_size`` x U(min_scale, max_scale)), random square crop of side
    ``image_size`` (padded with the ignore label where the image is smaller), random horizontal flip."""

    # Draws from torch's global generator: seeded by torch.manual_seed, and by the DataLoader differently
    # in each worker process (a generator held here would be copied, and repeat, in every worker).
    def __init__(self, image_size: int, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"scale range must satisfy 0 < min_scale <= max_scale, got {min_scale}, "
                             f"{max_scale}")
        self.image_size, self.min_scale, self.max_scale = image_size, min_scale, max_scale

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        scale = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(()).item()
        short_side = round(self.image_size * scale)
        image, mask = _resize_short_side(image, mask, short_side)
        image = _normalize(image.clamp(0, 255))
        pad_bottom = max(self.image_size - image.shape[-2], 0)
        pad_right = max(self.image_size - image.shape[-1], 0)
        if pad_bottom or pad_right:
            image = F.pad(image, (0, pad_right, 0, pad_bottom), value=0.0)
            mask = F.pad(mask, (0, pad_right, 0, pad_bottom), value=IGNORE_INDEX)
        top = int(torch.randint(0, image.shape[-2] - self.image_size + 1, ()))
        left = int(torch.randint(0, image.shape[-1] - self.image_size + 1, ()))
        image = image[:, top:top + self.image_size, left:left + self.image_size]
        mask = mask[top:top + self.image_size, left:left + self.image_size]
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image.contiguous(), mask.contiguous()


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """int64 (C, C) counts: row = true class, column = predicted class; ``ignore_index`` pixels left out."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    keep = targets != ignore_index
    truth, predicted = targets[keep].long(), predictions[keep].long()
    if truth.numel() and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"mask values must be in [0, {num_classes - 1}] or {ignore_index}, found "
                         f"{sorted(set(torch.unique(truth).tolist()) - set(range(num_classes)))}")
    counts = torch.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    """mIoU (mean over classes present in truth or prediction of TP / (TP + FP + FN)), pixel accuracy
    (correct / all counted pixels) and the per-class IoU (NaN for a class absent from both)."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    iou = true_positive / union  # 0 / 0 = NaN: a class neither present nor predicted
    present = union > 0
    total = confusion.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else math.nan,
        "iou_per_class": iou.tolist(),
    }


def train_segmenter(model: nn.Module, dataset: Dataset, settings: SegmentationSettings,
                    log: Callable[[str], None] = print) -> list[float]:
    """Fine-tune on (normalized image, mask) crops of equal size; returns the loss of each step."""
    generator = torch.Generator().manual_seed(settings.seed)
    # A last batch of one image would make BatchNorm's batch statistics degenerate: drop it.
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True,
                        drop_last=len(dataset) > settings.batch_size, num_workers=settings.num_workers,
                        generator=generator)
    lr = scaled_learning_rate(settings.base_lr, settings.batch_size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=0.9, weight_decay=settings.weight_decay)
    total_steps = max(settings.epochs * len(loader), 1)
    # poly decay (DeepLab)
    step = SupervisedStep(optimizer, lambda s: lr * (1 - s / total_steps) ** 0.9, "segmentation")
    step_losses = []
    device = next(model.parameters()).device
    model.train()
    for epoch in range(settings.epochs):
        started, epoch_loss = time.perf_counter(), 0.0
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            outputs = model(images)
            loss = F.cross_entropy(outputs["out"], masks, ignore_index=IGNORE_INDEX)
            if "aux" in outputs:
                loss = loss + 0.5 * F.cross_entropy(outputs["aux"], masks, ignore_index=IGNORE_INDEX)
            step_losses.append(step(loss))
            epoch_loss += step_losses[-1]
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {epoch_loss / max(len(loader), 1):.4f} "
            f"({time.perf_counter() - started:.0f} s)")
    return step_losses


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset: Dataset, num_classes: int, image_size: int) -> dict:
    """Each raw (uint8 image, mask) resized to a short side of ``image_size``, predicted, and the logits
    upsampled back to the mask's own size: the scores are at the annotation's resolution."""
    model.eval()
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        resized, _ = _resize_short_side(image, None, image_size)
        logits = model(_normalize(resized.clamp(0, 255))[None].to(device))["out"]
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        confusion += confusion_matrix(logits.argmax(1)[0].cpu(), mask, num_classes)
    return segmentation_scores(confusion)


def finetune_segmentation(backbone: ResNetBackbone, train_set: Dataset, test_set: Dataset, num_classes: int,
                          settings: SegmentationSettings,
                          log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Build, fine-tune and evaluate a segmenter on raw (uint8 image, int64 mask) datasets."""
    torch.manual_seed(settings.seed)
    model = build_segmenter(backbone, num_classes, settings.head, settings.output_stride, settings.aux_loss)
    model.to(resolve_device(settings.device))
    transform = SegmentationTrainTransform(settings.image_size, settings.min_scale, settings.max_scale)
    started = time.perf_counter()
    step_losses = train_segmenter(model, TransformedDataset(train_set, transform), settings, log)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate_segmenter(model, test_set, num_classes, settings.image_size)
    metrics.update(train_seconds=round(train_seconds, 1),
                   eval_seconds=round(time.perf_counter() - started, 1),
                   final_loss=step_losses[-1] if step_losses else math.nan)
    return model, metrics
