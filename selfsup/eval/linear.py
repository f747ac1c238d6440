"""Linear probe: a linear classifier trained on frozen, precomputed features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int,
                  weight_decay: float, batch_size: int, seed: int) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        classifier.weight.normal_(0, 0.01, generator=generator)
        classifier.bias.zero_()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(classifier(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier


@torch.no_grad()
def _accuracy(classifier: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (classifier(features).argmax(dim=1) == labels).float().mean().item()


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor,
                          test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int | None = None,
                          epochs: int = 100, batch_size: int = 256, seed: int = 0,
                          weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)) -> float:
    """Top-1 accuracy (in %) of a linear classifier on frozen features.

    Features are standardised with the training set's mean and std; SGD (momentum 0.9, lr 0.1, cosine)
    trains the classifier. The weight decay is chosen among ``weight_decays`` on a held-out 10% of the
    training set, then the classifier is retrained on all of it: the test set is never used for choices.
    """
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_features, test_features = train_features.float(), test_features.float()
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std

    if len(weight_decays) > 1 and len(train_features) >= 20:
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed + 1))
        n_val = max(len(order) // 10, 1)
        val, fit = order[:n_val], order[n_val:]
        scores = []
        for wd in weight_decays:
            classifier = _train_linear(train_features[fit], train_labels[fit], num_classes, epochs, wd,
                                       batch_size, seed)
            scores.append(_accuracy(classifier, train_features[val], train_labels[val]))
        best_wd = weight_decays[max(range(len(scores)), key=scores.__getitem__)]
    else:
        best_wd = weight_decays[0]
    classifier = _train_linear(train_features, train_labels, num_classes, epochs, best_wd, batch_size, seed)
    return _accuracy(classifier, test_features, test_labels)
