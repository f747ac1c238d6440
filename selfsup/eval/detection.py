"""Transfer to object detection: Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017) from
torchvision on a selfsup ResNet, fine-tuned end to end, evaluated by COCO box mAP.

    ResNet (all stages trainable, BatchNorm in training mode) ─ FPN ─ RPN ─ RoI heads ─ boxes, scores

The whole network is fine-tuned, BatchNorm included, as in MoCo's detection transfer (He et al. 2020,
which fine-tunes with synchronized BatchNorm); torchvision's default freezes it, which suits ImageNet
weights but would leave a randomly initialized backbone unnormalized. Metrics come from pycocotools
(imported only when evaluating): mAP over IoU 0.50:0.95 and mAP at IoU 0.5.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from selfsup.data.annotations import TransformedDataset
from selfsup.devices import resolve_device
from selfsup.eval.supervised import SupervisedStep
from selfsup.eval.transfer_settings import DetectionSettings
from selfsup.models.backbones import ResNetBackbone
from selfsup.schedules import scaled_learning_rate, warmup_cosine

# Faster R-CNN's default test-time size ratio (800 / 1333): a short side of S allows a long side of 5S/3.
LONG_TO_SHORT_SIDE = 1333 / 800


def build_detector(backbone: ResNetBackbone, num_classes: int, image_size: int, fpn_channels: int = 256,
                   representation_size: int = 1024, proposals_per_image: int = 2000,
                   rois_per_image: int = 512) -> FasterRCNN:
    """Faster R-CNN + FPN over ``backbone.resnet``'s four stages; ``num_classes`` counts the background.

    Images are resized to a short side of ``image_size`` and normalized by ImageNet statistics (those
    of selfsup's pretraining recipes too).
    """
    from selfsup.models.external import resnet_body

    resnet = resnet_body(backbone)
    if resnet is None:
        raise ValueError(f"transfer detect: backbone {getattr(backbone, 'name', type(backbone).__name__)} is not a "
                         "ResNet; Faster R-CNN + FPN is built here over a ResNet's four stages (resnet18/34/50, or "
                         "torchvision:resnet*, resnext*, wide_resnet*)")
    stage_channels = [_stage_out_channels(stage)
                      for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)]
    feature_pyramid = BackboneWithFPN(
        resnet, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=stage_channels, out_channels=fpn_channels,
    )
    roi_side = 7  # MultiScaleRoIAlign's output side in FasterRCNN's default box_roi_pool
    return FasterRCNN(
        feature_pyramid, min_size=image_size, max_size=math.ceil(image_size * LONG_TO_SHORT_SIDE),
        box_head=TwoMLPHead(fpn_channels * roi_side**2, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        rpn_post_nms_top_n_train=proposals_per_image, box_batch_size_per_image=rois_per_image,
    )


def _stage_out_channels(stage: nn.Sequential) -> int:
    last_block = stage[-1]
    last_conv = last_block.conv3 if hasattr(last_block, "conv3") else last_block.conv2
    return last_conv.out_channels


class DetectionTrainTransform:
    """uint8 image -> float in [0, 1], a random horizontal flip of image and boxes; masks are dropped
    (Faster R-CNN has no mask branch, and resizing them would cost time for nothing)."""

    # Draws from torch's global generator, seeded by torch.manual_seed and per DataLoader worker.
    def __init__(self, flip_probability: float = 0.5) -> None:
        self.flip_probability = flip_probability

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor]):
        target = {key: value for key, value in target.items() if key != "masks"}
        image = image.float() / 255
        if torch.rand(()) < self.flip_probability:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image, target


def detection_eval_transform(image: torch.Tensor, target: dict[str, torch.Tensor]):
    return image.float() / 255, {key: value for key, value in target.items() if key != "masks"}


def collate_detection(batch):
    """Detection samples differ in size and object count: a tuple of images and a tuple of targets."""
    return tuple(zip(*batch, strict=True))


def train_detector(model: FasterRCNN, dataset: Dataset, settings: DetectionSettings,
                   log: Callable[[str], None] = print) -> list[float]:
    """Fine-tune ``model`` on ``dataset`` (samples already float images); returns the loss of each step."""
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=False,
                        collate_fn=collate_detection, num_workers=settings.num_workers, generator=generator)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    lr = scaled_learning_rate(settings.base_lr, settings.batch_size)
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    total_steps = settings.epochs * len(loader)
    warmup_steps = min(settings.warmup_steps, max(total_steps // 5, 1))
    step = SupervisedStep(optimizer, lambda s: lr * warmup_cosine(s, total_steps, warmup_steps), "detection")
    step_losses = []
    device = next(model.parameters()).device
    model.train()
    for epoch in range(settings.epochs):
        started, epoch_loss = time.perf_counter(), 0.0
        for images, targets in loader:
            images = [image.to(device) for image in images]
            targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
            losses = model(images, targets)
            step_losses.append(step(sum(losses.values()), parts=losses))
            epoch_loss += step_losses[-1]
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {epoch_loss / max(len(loader), 1):.4f} "
            f"({time.perf_counter() - started:.0f} s)")
    return step_losses


@torch.no_grad()
def predict_boxes(model: FasterRCNN, dataset: Dataset, batch_size: int = 4) -> tuple[list[dict], list[dict]]:
    """Ground truths and predictions (boxes, labels, scores) of every image of ``dataset``, in order."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)
    ground_truths, predictions = [], []
    for images, targets in loader:
        for target, output in zip(targets, model([image.to(device) for image in images]), strict=True):
            ground_truths.append({"boxes": target["boxes"], "labels": target["labels"]})
            predictions.append({key: output[key].cpu() for key in ("boxes", "labels", "scores")})
    return ground_truths, predictions


def coco_box_map(ground_truths: Sequence[dict[str, torch.Tensor]],
                 predictions: Sequence[dict[str, torch.Tensor]], num_classes: int) -> dict[str, float]:
    """COCO box AP (pycocotools): ``map`` over IoU 0.50:0.95 and ``map_50`` at IoU 0.5, up to 100
    detections per image; image i of ``ground_truths`` goes with image i of ``predictions``.

    Boxes are (x0, y0, x1, y1); labels 1..num_classes-1. NaN when there is no ground-truth box at all.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("box mAP needs pycocotools: pip install pycocotools") from error
    if len(ground_truths) != len(predictions):
        raise ValueError(f"{len(ground_truths)} ground truths but {len(predictions)} predictions")

    def xywh(boxes: torch.Tensor) -> list[list[float]]:
        boxes = boxes.detach().double().reshape(-1, 4)
        return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()

    annotations, detections = [], []
    for image_id, (truth, prediction) in enumerate(zip(ground_truths, predictions, strict=True)):
        for box, label in zip(xywh(truth["boxes"]), truth["labels"].tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for box, label, score in zip(xywh(prediction["boxes"]), prediction["labels"].tolist(),
                                     prediction["scores"].tolist(), strict=True):
            detections.append({"image_id": image_id, "category_id": int(label), "bbox": box, "score": score})
    if not annotations:
        return {"map": math.nan, "map_50": math.nan}
    if not detections:
        return {"map": 0.0, "map_50": 0.0}
    # pycocotools prints its progress and summary table; the caller reports the figures itself.
    with contextlib.redirect_stdout(io.StringIO()):
        truth_index = COCO()
        truth_index.dataset = {"images": [{"id": i} for i in range(len(ground_truths))],
                               "annotations": annotations,
                               "categories": [{"id": label} for label in range(1, num_classes)]}
        truth_index.createIndex()
        evaluator = COCOeval(truth_index, truth_index.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map": max(float(evaluator.stats[0]), 0.0), "map_50": max(float(evaluator.stats[1]), 0.0)}


def finetune_detection(backbone: ResNetBackbone, train_set: Dataset, test_set: Dataset, num_classes: int,
                       settings: DetectionSettings,
                       log: Callable[[str], None] = print) -> tuple[FasterRCNN, dict]:
    """Build, fine-tune and evaluate a detector on raw (uint8) datasets; returns it and its metrics."""
    torch.manual_seed(settings.seed)
    model = build_detector(backbone, num_classes, settings.image_size, settings.fpn_channels,
                           settings.representation_size, settings.proposals_per_image,
                           settings.rois_per_image).to(resolve_device(settings.device))
    train_set = TransformedDataset(train_set, DetectionTrainTransform(settings.flip_probability))
    test_set = TransformedDataset(test_set, detection_eval_transform)
    started = time.perf_counter()
    step_losses = train_detector(model, train_set, settings, log)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = coco_box_map(*predict_boxes(model, test_set, settings.batch_size), num_classes=num_classes)
    metrics.update(train_seconds=round(train_seconds, 1),
                   eval_seconds=round(time.perf_counter() - started, 1),
                   final_loss=step_losses[-1] if step_losses else math.nan)
    return model, metrics
