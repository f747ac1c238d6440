"""The evaluation table: kNN and linear-probe top-1 of a backbone, beside random init and raw pixels."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from selfsup.data.datasets import ImageData
from selfsup.eval.features import extract_features, pixel_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe_accuracy


def reinitialized(backbone: nn.Module, seed: int) -> nn.Module:
    """A copy of ``backbone`` with every layer reset to its random initialisation (seeded, global RNG untouched).

    A torchvision or timm backbone is built anew by its library, since ``reset_parameters`` misses what has none
    (a ViT's class token and position embedding, ConvNeXt's layer scale) and the library's own initialisation."""
    from selfsup.models.external import ExternalBackbone

    if isinstance(backbone, ExternalBackbone):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = ExternalBackbone(backbone.name, backbone.backbone_args, backbone.seed)
        device = next(backbone.parameters()).device
        return fresh.to(device).train(backbone.training)
    fresh = copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if module is not fresh and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return fresh


def evaluation_table(backbone: nn.Module, train: ImageData, test: ImageData, image_size: int, mean, std,
                     knn_k: int = 200, knn_temperature: float = 0.1, linear_max_iter: int = 100,
                     baselines: bool = True, device: torch.device | str = "cpu", seed: int = 0,
                     num_workers: int = 2, progress: bool = False,
                     log: Callable[[str], None] = print,
                     pretrained_features: tuple[torch.Tensor, torch.Tensor] | None = None,
                     random_features: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Rows {"name", "knn_top1", "linear_top1"} for the backbone (and baselines), plus the top-level
    ``knn_top1`` / ``linear_top1`` of the backbone itself.

    ``pretrained_features``, ``random_features``: the (train, test) features of the backbone and of
    :func:`reinitialized` ``(backbone, seed)``, when the caller already has them.
    """
    for split in (train, test):
        if split.labels is None:
            raise ValueError(f"evaluation needs labelled data; {split.name} has no labels (use an ImageFolder "
                             "layout with one sub-folder per class)")
    if train.num_classes < 2:
        raise ValueError(f"evaluation needs at least 2 classes; {train.name} has {train.num_classes}")
    num_classes = max(train.num_classes, int(test.labels.max()) + 1)
    if pretrained_features is None:
        pretrained_features = tuple(extract_features(backbone, d, image_size, mean, std, device=device,
                                                     num_workers=num_workers, progress=progress)
                                    for d in (train, test))
    known = {id(train): pretrained_features[0], id(test): pretrained_features[1]}
    candidates: list[tuple[str, Callable[[ImageData], torch.Tensor]]] = [("pretrained", lambda d: known[id(d)])]
    if baselines:
        if random_features is None:
            random_backbone = reinitialized(backbone, seed).to(device)
            random_features = tuple(extract_features(random_backbone, d, image_size, mean, std, device=device,
                                                     num_workers=num_workers) for d in (train, test))
        known_random = {id(train): random_features[0], id(test): random_features[1]}
        candidates.append(("random init", lambda d: known_random[id(d)]))
        if train.in_memory and test.in_memory:
            candidates.append(("raw pixels", lambda d: pixel_features(d, image_size)))
    rows = []
    for name, features_of in candidates:
        train_features, test_features = features_of(train), features_of(test)
        knn = knn_accuracy(train_features, train.labels, test_features, test.labels, num_classes, knn_k,
                           knn_temperature)
        linear = linear_probe_accuracy(train_features, train.labels, test_features, test.labels, num_classes,
                                       max_iter=linear_max_iter, seed=seed)
        rows.append({"name": name, "knn_top1": round(knn, 2), "linear_top1": round(linear, 2),
                     "feature_dim": int(train_features.shape[1])})
        log(f"  {name:<12} kNN {knn:6.2f}   linear {linear:6.2f}")
    return {"knn_top1": rows[0]["knn_top1"], "linear_top1": rows[0]["linear_top1"], "rows": rows,
            "train_data": train.name, "test_data": test.name, "knn_k": knn_k,
            "knn_temperature": knn_temperature, "linear_max_iter": linear_max_iter}


def format_table(table: dict) -> str:
    """The rows as text, and under them :func:`describe_table`'s sentence when the baselines are there."""
    lines = [f"{'features':<14}{'kNN top-1':>10}{'linear top-1':>14}", "-" * 38]
    lines += [f"{row['name']:<14}{row['knn_top1']:>10.2f}{row['linear_top1']:>14.2f}" for row in table["rows"]]
    sentence = describe_table(table)
    return "\n".join(lines + ([sentence] if sentence else []))


# Gains smaller than this (points of top-1) are read as no difference: a seed moves these figures by about 1.
CLEAR_GAIN = 1.0


def describe_table(table: dict) -> str | None:
    """One plain sentence saying what the table shows: whether the pretrained backbone is ahead of the same
    network at random initialisation on kNN and on the linear probe, and where raw pixels stand. None without
    a "pretrained" and a "random init" row."""
    rows = {row["name"]: row for row in table.get("rows", [])}
    if "pretrained" not in rows or "random init" not in rows:
        return None
    pretrained, random = rows["pretrained"], rows["random init"]
    gains = {probe: pretrained[f"{probe}_top1"] - random[f"{probe}_top1"] for probe in ("knn", "linear")}
    said = {"knn": "kNN", "linear": "the linear probe"}

    def signed(probe: str) -> str:
        gain = gains[probe]
        return f"{gain:.1f} points ahead on {said[probe]}" if gain >= 0 else \
            f"{-gain:.1f} points behind on {said[probe]}"

    if all(gain >= CLEAR_GAIN for gain in gains.values()):
        sentence = (f"Pretraining helped: the pretrained backbone is {gains['knn']:.1f} points ahead of the same "
                    f"network at random init on kNN and {gains['linear']:.1f} on the linear probe.")
    elif all(gain < CLEAR_GAIN for gain in gains.values()):
        sentence = (f"Pretraining did not help here: against the same network at random init it is "
                    f"{signed('knn')} and {signed('linear')}; a longer run, or the method's recipe in configs/, "
                    f"may change that.")
    else:
        sentence = (f"Pretraining helped on one probe only: against the same network at random init it is "
                    f"{signed('knn')} and {signed('linear')}.")
    pixels = rows.get("raw pixels")
    behind = [probe for probe in gains if pixels is not None and pixels[f"{probe}_top1"] > pretrained[f"{probe}_top1"]]
    if len(behind) == 2:
        sentence += (f" Raw pixels score higher still ({pixels['knn_top1']:.1f} / {pixels['linear_top1']:.1f}): "
                     "the features do not yet hold more about the classes than the pixels do.")
    elif behind:
        probe = behind[0]
        sentence += (f" Raw pixels are still ahead on {said[probe]} ({pixels[f'{probe}_top1']:.1f} against "
                     f"{pretrained[f'{probe}_top1']:.1f}).")
    return sentence
