"""Fine-tuning: the whole backbone and a linear head trained with labels, and the low-label setting.

The semi-supervised tables of SimCLR (Chen et al. 2020, Table 7) and BYOL (Grill et al. 2020, Table 2)
train on 1% and 10% of the labels, drawn class-balanced; :func:`low_label_table` gives the linear probe and
fine-tuning top-1 on such subsets (:func:`selfsup.data.subsets.balanced_subset`, fixed seed).

Unlike the kNN and linear probe, fine-tuning changes the encoder: it trains a deep copy, so the backbone
passed in is left as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.datasets import ImageData
from selfsup.data.subsets import balanced_subset, subset_data
from selfsup.eval.features import extract_features, normalize_uint8
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.eval.supervised import SupervisedStep
from selfsup.schedules import warmup_cosine

__all__ = ["balanced_subset", "finetune_accuracy", "low_label_table"]


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def _light_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero-padding by 1/8 of the side, and a horizontal flip, per image: the CIFAR
    augmentation of supervised ResNets (He et al. 2016, sec. 4.2), which SimCLR's fine-tuning also uses
    (random crop and flip only, appendix B.5). Shapes: (B, C, S, S) float -> the same."""
    batch, _, side, _ = images.shape
    pad = max(1, side // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=images.device)
    rows = (offsets[:, 0, None] + torch.arange(side, device=images.device))[:, :, None]  # (B, S, 1)
    columns = (offsets[:, 1, None] + torch.arange(side, device=images.device))[:, None, :]  # (B, 1, S)
    flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
    columns = torch.where(flip[:, None, None], columns.flip(-1), columns)
    index = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows, columns].permute(0, 3, 1, 2)


def finetune_accuracy(backbone: nn.Module, train: ImageData, test: ImageData, image_size: int, mean, std,
                      num_classes: int | None = None, epochs: int = 30, batch_size: int = 256,
                      base_lr: float = 0.05, weight_decay: float = 5e-4, momentum: float = 0.9,
                      augment: bool = True, train_indices: torch.Tensor | None = None,
                      device: torch.device | str = "cpu", seed: int = 0,
                      log: Callable[[str], None] | None = None) -> float:
    """Top-1 accuracy (in %) on ``test`` after fine-tuning a copy of ``backbone`` with a new linear head.

    SGD with momentum and weight decay over every weight, the learning rate ``base_lr x batch / 256``
    following a cosine to 0 over ``epochs`` (no warmup: the backbone starts trained). Training images are
    normalized as for feature extraction, with a random crop and flip when ``augment``; test images get
    the evaluation transform only. ``train_indices`` restricts training to those images (the low-label
    setting). In-memory data only (images <= 64 px); larger images need a DataLoader pipeline.

    Raises ValueError for unlabelled or on-disk data, a batch larger than the training set, or
    ``epochs < 1``.
    """
    for split in (train, test):
        if split.labels is None:
            raise ValueError(f"fine-tuning needs labelled data; {split.name} has no labels")
        if split.images is None:
            raise ValueError(f"fine-tuning supports in-memory data (images <= 64 px); {split.name} is on disk")
    if epochs < 1:
        raise ValueError(f"fine-tuning: epochs must be >= 1, got {epochs}")
    device = torch.device(device)
    indices = torch.arange(len(train)) if train_indices is None else torch.as_tensor(train_indices).long()
    images, labels = train.images[indices], train.labels[indices]
    batch_size = min(batch_size, len(indices))
    if num_classes is None:
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Classifier(copy.deepcopy(backbone), backbone.feature_dim, num_classes).to(device)
    lr = base_lr * batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    total_steps = epochs * math.ceil(len(indices) / batch_size)
    step = SupervisedStep(optimizer, lambda s: lr * warmup_cosine(s, total_steps, 0), "fine-tuning")
    augment_generator = torch.Generator(device=device).manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(indices), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            if len(batch) < 2:  # BatchNorm cannot train on a single image
                continue
            x = normalize_uint8(images[batch].to(device), image_size, mean, std)
            if augment:
                x = _light_augment(x, augment_generator)
            total_loss += step(F.cross_entropy(model(x), labels[batch].to(device))) * len(batch)
        if log is not None:
            log(f"fine-tuning epoch {epoch + 1}/{epochs}: loss {total_loss / len(indices):.4f}")

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 512):
            x = normalize_uint8(test.images[start:start + 512].to(device), image_size, mean, std)
            correct += int((model(x).argmax(1).cpu() == test.labels[start:start + 512]).sum())
    return 100.0 * correct / len(test)


def low_label_table(backbone: nn.Module, train: ImageData, test: ImageData, image_size: int, mean, std,
                    fractions: Sequence[float] = (0.01, 0.1), finetune_epochs: int = 30, linear_max_iter: int = 100,
                    batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
                    features: tuple[torch.Tensor, torch.Tensor] | None = None, baselines: bool = False,
                    random_features: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """Linear-probe and fine-tuning top-1 (%) on class-balanced fractions of the training labels.

    Each fraction's subset is :func:`balanced_subset` of ``train.labels`` with ``seed``; the linear probe
    trains on the frozen features of that subset, fine-tuning on its images. Rows:
    ``{"fraction", "labelled_images", "linear_top1", "finetune_top1"}``, and with ``baselines`` also
    ``random_linear_top1`` and ``random_finetune_top1``: the same backbone at random initialisation, probed
    and trained on the same labels for the same epochs (the papers' supervised-from-scratch row), so the
    table shows what pretraining bought at each fraction. ``features``, ``random_features``: the (train, test)
    features of the backbone and of its random initialisation, when the caller already has them.
    """
    if train.labels is None or test.labels is None:
        raise ValueError("the low-label table needs labelled train and test data")
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if features is None:
        features = tuple(extract_features(backbone, d, image_size, mean, std, device=device) for d in (train, test))
    candidates = [("", backbone, features)]
    if baselines:
        from selfsup.eval.table import reinitialized

        random_backbone = reinitialized(backbone, seed).to(device)
        if random_features is None:
            random_features = tuple(extract_features(random_backbone, d, image_size, mean, std, device=device)
                                    for d in (train, test))
        candidates.append(("random_", random_backbone, random_features))
    rows = []
    for fraction in fractions:
        indices = balanced_subset(train.labels, fraction, seed)
        row = {"fraction": fraction, "labelled_images": len(indices)}
        for prefix, model, (train_features, test_features) in candidates:
            linear = linear_probe_accuracy(train_features[indices], train.labels[indices], test_features,
                                           test.labels, num_classes, max_iter=linear_max_iter, seed=seed)
            finetuned = finetune_accuracy(model, subset_data(train, indices), test, image_size, mean, std,
                                          num_classes, epochs=finetune_epochs, batch_size=batch_size,
                                          device=device, seed=seed)
            row |= {f"{prefix}linear_top1": round(linear, 2), f"{prefix}finetune_top1": round(finetuned, 2)}
        rows.append(row)
    return rows
