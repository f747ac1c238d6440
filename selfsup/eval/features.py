"""Frozen-encoder features: images -> (N, F) float tensors, for kNN, linear probes and maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selfsup.data.datasets import ImageData
from selfsup.data.images import read_rgb_image
from selfsup.transforms.views import eval_transform


class _FileDataset(Dataset):
    def __init__(self, data: ImageData, transform) -> None:
        self.paths, self.transform = data.paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(read_rgb_image(self.paths[index]))


def normalize_uint8(images: torch.Tensor, image_size: int, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, S, S), resized (bilinear, antialiased) when H != S, normalized."""
    x = images.float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def extract_features(encoder: nn.Module, data: ImageData, image_size: int, mean, std,
                     batch_size: int = 256, device: torch.device | str = "cpu", num_workers: int = 2,
                     progress: bool = False) -> torch.Tensor:
    """Features (N, F) of ``encoder`` in eval mode, on CPU in float32; the encoder's mode is restored."""
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    outputs = []
    if data.images is not None:
        batches = (normalize_uint8(data.images[i:i + batch_size].to(device), image_size, mean, std)
                   for i in range(0, len(data), batch_size))
        total = (len(data) + batch_size - 1) // batch_size
    else:
        resize = round(image_size * 256 / 224)  # the usual resize-then-center-crop ratio of ImageNet evaluation
        loader = DataLoader(_FileDataset(data, eval_transform(image_size, mean, std, resize=resize)),
                            batch_size=batch_size, num_workers=num_workers)
        batches = (b.to(device) for b in loader)
        total = len(loader)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, total=total, desc=f"features of {data.name}", unit="batch", leave=False)
    for batch in batches:
        outputs.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(outputs)


def pixel_features(data: ImageData, image_size: int) -> torch.Tensor:
    """Raw pixels as features (N, 3*S*S), the baseline that any learned feature should beat."""
    if data.images is None:
        raise ValueError("raw-pixel features need in-memory images")
    return torch.cat([normalize_uint8(data.images[i:i + 1024], image_size, (0.5,) * 3, (0.25,) * 3).flatten(1)
                      for i in range(0, len(data), 1024)])
