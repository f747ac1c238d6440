"""Readers of annotated images for detection and segmentation transfer.

- :class:`PennFudan`: the Penn-Fudan pedestrians (Wang et al. 2007): ``PNGImages/<stem>.png``,
  ``PedMasks/<stem>_mask.png`` (0 = background, k = person k) and ``Annotation/<stem>.txt``
  (PASCAL-style boxes); split deterministically, the first 120 names in sorted order for training.
- :class:`CocoDetection`: a COCO JSON file (``images``, ``annotations`` with ``bbox``, ``categories``).
- :class:`MaskPairs`: a folder of images and a folder of label masks with matching stems.

Detection samples are ``(image, target)``: ``image`` uint8 (3, H, W); ``target`` holds ``boxes``
float (N, 4) as (x0, y0, x1, y1) in pixels with exclusive ends (a one-pixel object at column 5 spans
5 to 6, as in torchvision and COCO), ``labels`` int64 (N,) with 0 kept for the background, and
``image_id``. An image with no objects has boxes of shape (0, 4). Segmentation samples are
``(image, mask)`` with ``mask`` int64 (H, W) of class indices. Every bad file raises an error that
names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

DetectionTarget = dict[str, torch.Tensor]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PENNFUDAN_TRAIN_COUNT = 120  # of 170 photos: 120 train / 50 test, the usual split (torchvision's tutorial)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def read_image_tensor(path: str | Path) -> torch.Tensor:
    """An image file as a uint8 tensor (3, H, W); a clear error naming a missing or unreadable file."""
    path = Path(path)
    _require_file(path, "image")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_label_mask(path: str | Path, image_size: tuple[int, int] | None = None,
                    image_path: str | Path | None = None) -> torch.Tensor:
    """A single-channel label PNG as int64 (H, W); ``image_size`` (H, W) is checked when given."""
    path = Path(path)
    _require_file(path, "mask")
    try:
        with Image.open(path) as mask_image:
            if mask_image.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"expected a single-channel label image, got mode {mask_image.mode}")
            array = np.asarray(mask_image, dtype=np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read mask {path}: {error}") from error
    if image_size is not None and tuple(array.shape) != tuple(image_size):
        of_image = f" of image {image_path}" if image_path is not None else ""
        raise ValueError(f"mask {path} has size {array.shape[1]}x{array.shape[0]} (WxH) but the image"
                         f"{of_image} is {image_size[1]}x{image_size[0]}")
    return torch.from_numpy(array.copy())


def boxes_from_instance_mask(instance_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) instance ids (0 = background) -> boxes float (N, 4) and masks bool (N, H, W), by id order."""
    instance_ids = [int(i) for i in torch.unique(instance_mask) if i != 0]
    if not instance_ids:
        height, width = instance_mask.shape
        return torch.zeros((0, 4)), torch.zeros((0, height, width), dtype=torch.bool)
    masks = torch.stack([instance_mask == i for i in instance_ids])
    boxes = []
    for mask in masks:
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        columns = torch.nonzero(mask.any(dim=0)).flatten()
        boxes.append([columns[0], rows[0], columns[-1] + 1, rows[-1] + 1])
    return torch.tensor(boxes, dtype=torch.float32), masks


_PASCAL_BOX = re.compile(r"Bounding box for object \d+ .*?:\s*\((\d+),\s*(\d+)\)\s*-\s*\((\d+),\s*(\d+)\)")


def read_pascal_boxes(path: str | Path) -> torch.Tensor:
    """Boxes of a Penn-Fudan ``Annotation/*.txt`` file as float (N, 4) with exclusive ends.

    The file's pixels count from (1, 1) and its ends are inclusive, so (Xmin, Ymin) - (Xmax, Ymax)
    becomes (Xmin - 1, Ymin - 1, Xmax, Ymax).
    """
    path = Path(path)
    _require_file(path, "annotation")
    text = path.read_text(encoding="utf-8", errors="replace")
    boxes = [[int(x0) - 1, int(y0) - 1, int(x1), int(y1)] for x0, y0, x1, y1 in _PASCAL_BOX.findall(text)]
    declared = re.search(r"Objects with ground truth\s*:\s*(\d+)", text)
    if declared is None:
        raise ValueError(f"annotation {path}: no 'Objects with ground truth' line; not a PASCAL annotation")
    if int(declared.group(1)) != len(boxes):
        raise ValueError(f"annotation {path}: declares {declared.group(1)} objects "
                         f"but has {len(boxes)} boxes")
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


class PennFudan(Dataset):
    """Penn-Fudan pedestrians for detection (``task="detection"``) or person-vs-background segmentation.

    Args:
        root: the folder holding ``PNGImages``, ``PedMasks`` (and ``Annotation``).
        split: ``"train"`` (the first 120 names in sorted order), ``"test"`` (the rest) or ``"all"``.
        task: ``"detection"``: ``(image, {"boxes", "labels", "masks", "image_id"})``, label 1 = person;
            ``"segmentation"``: ``(image, mask)`` with 1 = person, 0 = background.
        boxes_from: ``"masks"`` (the tight box of each instance mask) or ``"annotation"`` (the txt files).
        transform: applied to each sample (``(image, target) -> (image, target)``) after reading.
    """

    def __init__(self, root: str | Path, split: Literal["train", "test", "all"] = "train",
                 task: Literal["detection", "segmentation"] = "detection",
                 boxes_from: Literal["masks", "annotation"] = "masks",
                 transform: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]] | None = None,
                 train_count: int = PENNFUDAN_TRAIN_COUNT) -> None:
        self.root = Path(root)
        if split not in ("train", "test", "all"):
            raise ValueError(f"PennFudan split must be 'train', 'test' or 'all', got {split!r}")
        if task not in ("detection", "segmentation"):
            raise ValueError(f"PennFudan task must be 'detection' or 'segmentation', got {task!r}")
        if boxes_from not in ("masks", "annotation"):
            raise ValueError(f"PennFudan boxes_from must be 'masks' or 'annotation', got {boxes_from!r}")
        image_dir = self.root / "PNGImages"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"Penn-Fudan folder {image_dir} not found (expected PNGImages/ and "
                                    f"PedMasks/ under {self.root})")
        stems = sorted(path.stem for path in image_dir.glob("*.png"))
        if not stems:
            raise FileNotFoundError(f"no .png images in {image_dir}")
        if split != "all" and not 0 < train_count < len(stems):
            raise ValueError(f"PennFudan train_count {train_count} leaves no test images among {len(stems)}")
        self.stems = {"train": stems[:train_count], "test": stems[train_count:], "all": stems}[split]
        self.task, self.boxes_from, self.transform = task, boxes_from, transform

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, index: int) -> Path:
        return self.root / "PNGImages" / f"{self.stems[index]}.png"

    def __getitem__(self, index: int):
        stem = self.stems[index]
        image_path = self.image_path(index)
        image = read_image_tensor(image_path)
        instance_mask = read_label_mask(self.root / "PedMasks" / f"{stem}_mask.png",
                                        tuple(image.shape[1:]), image_path)
        if self.task == "segmentation":
            sample = image, (instance_mask > 0).long()
        else:
            boxes, masks = boxes_from_instance_mask(instance_mask)
            if self.boxes_from == "annotation":
                boxes = read_pascal_boxes(self.root / "Annotation" / f"{stem}.txt")
            target = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64),
                      "masks": masks.to(torch.uint8), "image_id": torch.tensor(index)}
            sample = image, target
        return self.transform(*sample) if self.transform is not None else sample


class CocoDetection(Dataset):
    """Boxes of a COCO JSON annotation file: ``(image, {"boxes", "labels", "image_id"})``.

    Category ids map to labels 1..K in sorted id order (0 is the detector's background);
    :attr:`category_ids` gives the id of each label - 1. Crowd annotations (``iscrowd: 1``) and boxes
    with no area are left out, as torchvision's reference scripts do.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path,
                 transform: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]] | None = None) -> None:
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        _require_file(self.annotation_file, "COCO annotation file")
        try:
            content = json.loads(self.annotation_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot parse COCO annotation file {self.annotation_file}: {error}") from error
        for key in ("images", "annotations", "categories"):
            if not isinstance(content, dict) or not isinstance(content.get(key), list):
                raise ValueError(f"COCO annotation file {self.annotation_file}: missing list '{key}'")
        self.category_ids = sorted(int(category["id"]) for category in content["categories"])
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids, start=1)}
        self.images = sorted(content["images"], key=lambda entry: entry["id"])
        self.boxes: dict[int, list[list[float]]] = {int(entry["id"]): [] for entry in self.images}
        self.labels: dict[int, list[int]] = {int(entry["id"]): [] for entry in self.images}
        for number, annotation in enumerate(content["annotations"]):
            where = f"COCO annotation file {self.annotation_file}, annotations[{number}]"
            try:
                image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
                x, y, width, height = (float(v) for v in annotation["bbox"])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{where}: needs image_id, category_id and bbox [x, y, w, h] ({error})") \
                    from error
            if image_id not in self.boxes:
                raise ValueError(f"{where}: image_id {image_id} is not in 'images'")
            if category_id not in label_of:
                raise ValueError(f"{where}: category_id {category_id} is not in 'categories'")
            if annotation.get("iscrowd", 0) or width <= 0 or height <= 0:
                continue
            self.boxes[image_id].append([x, y, x + width, y + height])
            self.labels[image_id].append(label_of[category_id])
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Categories plus the background."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        entry = self.images[index]
        image_id = int(entry["id"])
        image = read_image_tensor(self.image_dir / entry["file_name"])
        target = {"boxes": torch.tensor(self.boxes[image_id], dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(self.labels[image_id], dtype=torch.int64),
                  "image_id": torch.tensor(image_id)}
        return self.transform(image, target) if self.transform is not None else (image, target)


class MaskPairs(Dataset):
    """Semantic segmentation from ``image_dir/<stem>.<ext>`` and ``mask_dir/<stem><mask_suffix>``.

    Mask pixels hold class indices; ``ignore_index`` (255 by default) marks pixels left out of the loss
    and the metrics. Every image needs its mask: a missing one is an error naming both files.
    """

    def __init__(self, image_dir: str | Path, mask_dir: str | Path, mask_suffix: str = ".png",
                 transform: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]] | None = None) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"folder not found: {folder}")
        self.image_paths = sorted(path for path in self.image_dir.iterdir()
                                  if path.suffix.lower() in IMAGE_SUFFIXES)
        if not self.image_paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.image_dir}")
        self.mask_paths = [self.mask_dir / f"{path.stem}{mask_suffix}" for path in self.image_paths]
        for image_path, mask_path in zip(self.image_paths, self.mask_paths, strict=True):
            if not mask_path.is_file():
                raise FileNotFoundError(f"mask not found: {mask_path} (for image {image_path})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int):
        image = read_image_tensor(self.image_paths[index])
        mask = read_label_mask(self.mask_paths[index], tuple(image.shape[1:]), self.image_paths[index])
        return self.transform(image, mask) if self.transform is not None else (image, mask)


class TransformedDataset(Dataset):
    """``dataset`` with ``transform(image, target)`` applied to each sample."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.transform(*self.dataset[index])
