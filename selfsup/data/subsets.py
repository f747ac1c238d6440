"""Class-balanced and stratified subsets of labelled data, drawn with a fixed seed.

The low-label setting of SimCLR and BYOL (Chen et al. 2020, sec. 6; Grill et al. 2020, sec. 4.2) fine-tunes
on 1% and 10% of ImageNet's labels, "sampled in a class-balanced way"; :func:`balanced_subset` draws such
subsets. :func:`stratified_sample` draws a given number of images keeping the class proportions, for quick
runs on part of a data set.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from selfsup.data.datasets import ImageData


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("labels are empty: no subset to draw")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    return labels.long()


def _draw(labels: torch.Tensor, counts: dict[int, int], seed: int) -> torch.Tensor:
    """``counts[c]`` indices of each class c, drawn without replacement; sorted, int64."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(counts):
        members = torch.nonzero(labels == label).flatten()
        # A permutation per class from one generator, classes in order: the same seed gives the same subset.
        chosen.append(members[torch.randperm(len(members), generator=generator)[:counts[label]]])
    return torch.cat(chosen).sort().values


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced ``fraction`` of the labelled images: from each class,
    ``round(fraction * class size)`` of its images (at least one), drawn at random with ``seed``.

    Shapes: labels (N,) integer -> indices (M,) int64, sorted, M about ``fraction * N``.
    Raises ValueError when ``fraction`` is not in (0, 1] or the labels are not a 1-D integer tensor.
    """
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
        raise ValueError(f"balanced_subset: fraction must be in (0, 1], got {fraction!r}")
    labels = _check_labels(labels)
    classes, sizes = labels.unique(return_counts=True)
    counts = {int(c): max(1, round(fraction * int(n))) for c, n in zip(classes, sizes)}
    return _draw(labels, counts, seed)


def stratified_sample(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Indices of exactly ``count`` images keeping the class proportions (largest remainders decide the
    rounding), drawn at random with ``seed``.

    Shapes: labels (N,) integer -> indices (count,) int64, sorted.
    Raises ValueError when ``count`` is not in [1, N].
    """
    labels = _check_labels(labels)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(labels):
        raise ValueError(f"stratified_sample: count must be an integer in [1, {len(labels)}], got {count!r}")
    classes, sizes = labels.unique(return_counts=True)
    exact = sizes.double() * count / len(labels)
    floors = exact.floor().long()
    remainder = count - int(floors.sum())
    # Ties in the remainder go to the lower class index (a stable sort), so the counts are deterministic.
    order = torch.sort(exact - floors, descending=True, stable=True).indices
    floors[order[:remainder]] += 1
    return _draw(labels, {int(c): int(n) for c, n in zip(classes, floors) if n > 0}, seed)


def subset_data(data: ImageData, indices: torch.Tensor, name: str | None = None) -> ImageData:
    """The images ``indices`` of ``data`` (in memory or on disk), with their labels; the class list (and
    its empty class folders, source and notes) is the whole data set's. ``skipped`` and ``resized`` are
    left out: they count files of the whole set."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    images = data.images[indices] if data.images is not None else None
    paths = [data.paths[i] for i in indices.tolist()] if data.paths is not None else None
    labels = data.labels[indices] if data.labels is not None else None
    return replace(data, name=name or f"{data.name}[{len(indices)}]", images=images, paths=paths, labels=labels,
                   skipped=[], resized=0)
