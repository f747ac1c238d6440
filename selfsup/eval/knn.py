"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> torch.Tensor:
    r"""Class scores (M, C) of a temperature-weighted kNN vote (Wu et al. 2018, "Unsupervised Feature
    Learning via Non-Parametric Instance Discrimination", sec. 3.4).

    With cosine similarities :math:`s_i` of a test feature to its k nearest training features, each
    neighbour votes for its class with weight :math:`\exp(s_i / T)`; the class with the largest sum wins.

    Shapes: train_features (N, F), train_labels (N,) int64, test_features (M, F) -> (M, C).
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"knn: {train_features.shape[0]} training features but {train_labels.shape[0]} labels")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError("knn: training and test features have different sizes")
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start:start + chunk_size].float(), dim=1)
        similarity, neighbours = (queries @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int | None = None, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Top-1 accuracy (in %) of :func:`knn_predict`."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1) == test_labels).float().mean().item()
