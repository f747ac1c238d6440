"""Batches of augmented views (two, or a method's multi-crop) for pretraining, reproducible to the step.

Each batch is a tuple ``(view_1, ..., view_V, labels)``: the method's V views of the same images, then their
labels (None without labels).

Randomness is a function of (seed, epoch, batch) for in-memory data and of (seed, epoch, image index)
for data on disk, never of a running random state. So a run resumed from any step replays exactly what
an uninterrupted run would have seen, whatever the number of DataLoader workers.

It does not depend on the number of processes either: each process takes its rows of the same global
batch, and the in-memory augmentation draws the random parameters of the whole global batch and keeps
this process's rows. So W processes with B images each see exactly the views one process sees with the
global batch of W x B images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from selfsup.data.datasets import ImageData
from selfsup.data.images import BadImageError, read_rgb_image

_MIX = 0x9E3779B97F4A7C15


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, epoch, batch, ...)."""
    value = 0
    for part in parts:
        value = (value * 6364136223846793005 + int(part) + _MIX) % (1 << 63)
    return value


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))


def rank_batches(n: int, global_batch: int, seed: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    """This rank's index batches of one epoch: a seeded permutation cut into global batches (the last,
    incomplete one dropped), each split into ``world`` equal parts."""
    if global_batch % world:
        raise ValueError(f"batch_size {global_batch} must be divisible by the number of processes ({world})")
    order = epoch_permutation(n, seed, epoch)
    per_rank = global_batch // world
    steps = n // global_batch
    return [order[s * global_batch + rank * per_rank: s * global_batch + (rank + 1) * per_rank]
            for s in range(steps)]


class PerImageViews:
    """Adapts a per-image multi-view transform to a batch of uint8 images, seeded by a generator.

    ``images`` are rows ``first_row ...`` of a global batch of ``global_batch`` images (all of it by
    default); each image is seeded by its row in the global batch, as :class:`BatchedViews` does.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, first_row: int = 0,
                 global_batch: int | None = None):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device
                                 if generator is not None else None).item())
        per_image = []
        with torch.random.fork_rng(devices=[]):
            for row, image in enumerate(images.cpu(), start=first_row):
                torch.manual_seed(derived_seed(seed, row))
                per_image.append(self.transform(image))
        return tuple(torch.stack(views).to(images.device) for views in zip(*per_image))


class InMemoryViewBatches:
    """Batches of views of images held in memory, augmented in batches on ``device``.

    ``make_views(images_uint8, generator, first_row, global_batch) -> (view_1, ..., view_V)``: e.g.
    ``BatchedViews``; ``images_uint8`` are rows ``first_row ...`` of the global batch.
    """

    def __init__(self, data: ImageData, make_views: Callable, batch_size: int, seed: int,
                 device: torch.device, rank: int = 0, world: int = 1) -> None:
        if data.images is None:
            raise ValueError("InMemoryViewBatches needs in-memory images")
        if len(data) < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the data set ({len(data)} images from "
                             f"{data.name}); lower batch_size")
        self.data, self.make_views, self.batch_size = data, make_views, batch_size
        self.seed, self.device, self.rank, self.world = seed, device, rank, world
        # Pinned memory lets the host-to-device copy overlap compute on GPUs.
        self.images = data.images.pin_memory() if device.type == "cuda" else data.images

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor | None, ...]]:
        batches = rank_batches(len(self.data), self.batch_size, self.seed, epoch, self.rank, self.world)
        for index, batch in enumerate(batches):
            if index < start_batch:
                continue
            images = self.images[batch].to(self.device, non_blocking=True)
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derived_seed(self.seed, epoch, index))
            views = self.make_views(images, generator, self.rank * len(batch), self.batch_size)
            labels = self.data.labels[batch].to(self.device) if self.data.labels is not None else None
            yield *views, labels


class _FileViewDataset(Dataset):
    def __init__(self, paths: list[Path], labels: torch.Tensor | None, transform: Callable, seed: int,
                 skip_bad_images: bool) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform
        self.seed, self.skip_bad_images, self.epoch = seed, skip_bad_images, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = read_rgb_image(self.paths[index])
        except BadImageError:
            if self.skip_bad_images:
                return None
            raise
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, self.epoch, index))
            views = self.transform(image)
        label = int(self.labels[index]) if self.labels is not None else -1
        return *views, label


def _collate_skipping_bad(samples):
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    *views, labels = zip(*samples)
    return *(torch.stack(view) for view in views), torch.tensor(labels)


class FileViewBatches:
    """Batches of views decoded from files by DataLoader workers, with per-image transforms."""

    def __init__(self, data: ImageData, transform: Callable, batch_size: int, seed: int, device: torch.device,
                 num_workers: int = 2, rank: int = 0, world: int = 1, skip_bad_images: bool = False) -> None:
        if data.paths is None:
            raise ValueError("FileViewBatches needs image paths")
        if len(data) < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the data set ({len(data)} images in "
                             f"{data.name}); lower batch_size")
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.dataset = _FileViewDataset(data.paths, data.labels, transform, seed, skip_bad_images)

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0):
        self.dataset.epoch = epoch  # read by workers, which are started below for this epoch
        batches = rank_batches(len(self.data), self.batch_size, self.seed, epoch, self.rank, self.world)
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches[start_batch:]],
                            num_workers=self.num_workers, collate_fn=_collate_skipping_bad,
                            pin_memory=self.device.type == "cuda", timeout=600 if self.num_workers else 0)
        for batch in loader:
            if batch is None:
                continue
            *views, labels = (t.to(self.device, non_blocking=True) for t in batch)
            yield *views, (labels if self.data.labels is not None else None)
