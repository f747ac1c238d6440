"""Linear probe: an L2-regularised multinomial logistic regression on frozen, precomputed features.

Fitted full-batch with L-BFGS, as SimCLR's linear evaluation of transfer (Chen et al. 2020, appendix B.8):
the problem is convex, so about a hundred full-batch iterations get close to the optimum that epochs of
minibatch SGD only approach: seconds for 50,000 learned features on a CPU, a minute or two for raw pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                            max_iter: int = 100, start: tuple[torch.Tensor, torch.Tensor] | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, D) and bias (C,) minimising ``mean CE(x W^T + b, y) + l2 / 2 * ||W||^2``.

    features: (N, D) float; labels: (N,) int64 in [0, num_classes). Starts from ``start`` (weights, bias),
    or from zero, so the fit is deterministic; the bias is not penalised.
    """
    if start is None:
        start = (torch.zeros(num_classes, features.shape[1]), torch.zeros(num_classes))
    weight = start[0].to(features).clone().requires_grad_(True)
    bias = start[1].to(features).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(torch.addmm(bias, features, weight.t()), labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (torch.addmm(bias, features, weight.t()).argmax(dim=1) == labels).float().mean().item()


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor,
                          test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int | None = None,
                          max_iter: int = 100, seed: int = 0,
                          l2_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)) -> float:
    """Top-1 accuracy (in %) of a linear classifier on frozen features.

    Features are standardised with the training set's mean and std. The L2 strength is chosen among
    ``l2_grid`` on a held-out 10% of the training set (drawn with ``seed``), then the classifier is refitted on
    all of it: the test set is never used for choices. The grid is walked from the strongest L2 down, each fit
    starting from the previous solution (a regularisation path), and the refit starts from the chosen one:
    on 3,072 raw-pixel features L-BFGS needs many iterations from zero, few from a near neighbour.
    """
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_features, test_features = train_features.float(), test_features.float()
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std

    if len(l2_grid) > 1 and len(train_features) >= 20:
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed + 1))
        order = order.to(train_features.device)
        n_val = max(len(order) // 10, 1)
        val, fit = order[:n_val], order[n_val:]
        path = sorted(l2_grid, reverse=True)
        solutions, scores, previous = [], [], None
        for l2 in path:
            previous = fit_logistic_regression(train_features[fit], train_labels[fit], num_classes, l2, max_iter,
                                               previous)
            solutions.append(previous)
            scores.append(_accuracy(*previous, train_features[val], train_labels[val]))
        best = max(range(len(scores)), key=scores.__getitem__)
        best_l2, start = path[best], solutions[best]
    else:
        best_l2, start = l2_grid[0], None
    weight, bias = fit_logistic_regression(train_features, train_labels, num_classes, best_l2, max_iter, start)
    return _accuracy(weight, bias, test_features, test_labels)
