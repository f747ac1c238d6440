"""``selfsup.evaluate``: kNN and linear probe of a frozen backbone on labelled data, from Python.

The same protocol as ``selfsup eval`` and the table at the end of ``selfsup pretrain``
(:func:`selfsup.eval.table.evaluation_table`), without a config object, a data setting or files written: the
backbone may be a module or a checkpoint path, the data an :class:`ImageData`, a data setting or a pair of
tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from selfsup.data.datasets import ImageData, load_image_data, load_test_split, match_classes
from selfsup.eval.pretrained import load_backbone_and_metadata
from selfsup.eval.table import evaluation_table
from selfsup.transforms.views import CIFAR10_MEAN, CIFAR10_STD

LabelledData = ImageData | str | Path | tuple[torch.Tensor, torch.Tensor]


def _as_image_data(data: LabelledData, split: str, name: str) -> ImageData:
    """``data`` as labelled in-memory or on-disk :class:`ImageData`."""
    if isinstance(data, ImageData):
        return data
    if isinstance(data, (str, Path)):
        return load_image_data(str(data), split, progress=False)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = (torch.as_tensor(part) for part in data)
        if images.ndim == 3:  # (N, H, W) greyscale
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
            raise ValueError(f"evaluate: {name} images must be uint8 (N, 3, H, W), (N, 1, H, W) or (N, H, W); "
                             f"got {images.dtype} {tuple(images.shape)}")
        labels = labels.to(torch.int64).flatten()
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        return ImageData(name=name, images=images.expand(-1, 3, -1, -1).contiguous(), labels=labels,
                         classes=[str(k) for k in range(num_classes)])
    raise TypeError(f"evaluate: {name} must be an ImageData, a data setting (a built-in name, folder or "
                    f".npz/.npy file) or a pair (images, labels); got {type(data).__name__}")


def evaluate(backbone: nn.Module | str | Path, train_data: LabelledData = "digits",
             test_data: LabelledData | None = None, *, image_size: int | None = None,
             mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, knn_k: int = 200,
             knn_temperature: float = 0.1, linear_max_iter: int = 100, baselines: bool = False,
             device: torch.device | str = "cpu", seed: int = 0, num_workers: int = 2,
             log: Callable[[str], None] | None = None) -> dict:
    """Weighted kNN and linear-probe top-1 accuracy (in %) of a frozen backbone's features on labelled data.

    The protocol of ``selfsup eval``: features of the unaugmented images (in eval mode) of ``train_data``
    are the kNN bank (Wu et al. 2018: k = ``knn_k``, temperature ``knn_temperature``, cosine similarity)
    and the training set of an L2-regularised logistic regression (fitted by L-BFGS, the L2 strength chosen
    on a held-out tenth of the training data; :func:`selfsup.eval.linear.linear_probe_accuracy`); both are
    scored on ``test_data``. Nothing is written to disk.

    Args:
        backbone: a module mapping images (B, 3, S, S) to features (B, F), e.g. the ``backbone`` of a
            method after training, or the path of a selfsup checkpoint / ``backbone.pt`` (loaded with
            :func:`selfsup.load_backbone`, safely: ``weights_only=True``). A module is moved to ``device``
            for the evaluation and back afterwards; its train/eval mode is restored.
        train_data, test_data: an :class:`selfsup.data.ImageData` with labels; a data setting as
            ``--data`` takes (``"digits"``, ``"fashion-mnist"``, an ImageFolder, an ``.npz``); or a pair
            ``(images, labels)`` of uint8 images (N, 3, H, W) (or (N, 1, H, W), (N, H, W)) and integer
            labels 0..K-1. ``test_data`` None: the built-in set's own test split (for ``"digits"`` and
            ``"fashion-mnist"`` only). Test labels are matched to the training classes (by folder name
            for folders, by position otherwise).
        image_size: side the images are resized to; None: the checkpoint's, else the data's own side for
            in-memory images (at least 16, as ``selfsup pretrain`` chooses), else 224.
        mean, std: the normalization the backbone was trained with; None: the checkpoint's, else
            CIFAR-10's, the default of selfsup's view recipes (pass your views' ``ViewConfig.mean`` /
            ``.std`` if you changed them).
        baselines: also rows for the same architecture at random initialisation and for raw pixels.
        device: where features are computed; seed: the held-out split of the probe (and the random
            baseline); num_workers: DataLoader workers for images on disk; log: called with each row.

    Returns:
        ``{"knn_top1", "linear_top1", "rows", "train_data", "test_data", "knn_k", ...}``: the two
        accuracies of the backbone, and ``rows``, one ``{"name", "knn_top1", "linear_top1", "feature_dim"}``
        per candidate ("pretrained", and with ``baselines`` "random init" and "raw pixels").

    Raises:
        ValueError: unlabelled data, fewer than 2 classes, mismatched classes, or no test data for a folder.
    """
    meta: dict = {}
    if isinstance(backbone, (str, Path)):
        backbone, meta = load_backbone_and_metadata(backbone)
    train = _as_image_data(train_data, "train", "training data")
    if test_data is None:
        if not isinstance(train_data, (str, Path)):
            raise ValueError("evaluate: test_data is required unless train_data names a built-in data set "
                             "(digits, fashion-mnist)")
        test = load_test_split(str(train_data), None)
        if test is None:
            raise ValueError(f"evaluate: {train_data!r} has no test split of its own; give test_data")
    else:
        test = _as_image_data(test_data, "test", "test data")
    test = match_classes(train, test)
    if image_size is None:
        image_size = meta.get("image_size") or (max(train.image_side, 16) if train.in_memory else 224)
    mean = tuple(mean if mean is not None else meta.get("mean", CIFAR10_MEAN))
    std = tuple(std if std is not None else meta.get("std", CIFAR10_STD))
    parameter = next(iter(backbone.parameters()), None)
    home = parameter.device if parameter is not None else torch.device("cpu")
    backbone.to(device)
    try:
        return evaluation_table(backbone, train, test, image_size, mean, std, knn_k, knn_temperature,
                                linear_max_iter, baselines, device, seed, num_workers,
                                log=log if log is not None else (lambda *_: None))
    finally:
        backbone.to(home)
