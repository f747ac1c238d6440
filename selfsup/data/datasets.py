"""Image data sets: folders (ImageFolder or flat), arrays, and built-in offline sets.

A folder of small images is decoded once and kept in memory as a uint8 tensor (N, 3, S, S), which the
training loop augments in batches on the device; larger images stay on disk as paths and are decoded by
DataLoader workers. The side S is the data set's, not one file's: see :func:`dataset_image_side`.

Labels of a test split are matched to the training split's classes by :func:`match_classes`: by folder
name for folders, by position for arrays and built-in sets. :func:`load_test_split` says which test split
goes with a data setting.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from selfsup.data.folders import (
    SIDE_SAMPLE,
    FolderScan,
    dataset_image_side,
    decode_into_memory,
    load_folder_data,
    scan_folder,
    scan_image_folder,
)
from selfsup.data.image_data import ImageData, match_classes
from selfsup.data.images import SMALL_IMAGE_SIDE

__all__ = ["BUILTIN_DATASETS", "SIDE_SAMPLE", "SMALL_IMAGE_SIDE", "FolderScan", "ImageData", "dataset_image_side",
           "decode_into_memory", "default_datasets_dir", "load_array_data", "load_folder_data", "load_image_data",
           "load_test_split", "match_classes", "scan_folder", "scan_image_folder"]

# The built-in sets, each with its own test split (load_image_data(name, "test")).
BUILTIN_DATASETS = ("digits", "fashion-mnist")
# Array labels are class indices 0..K-1; larger values are ids to renumber (their class list would be huge).
MAX_ARRAY_CLASSES = 1 << 20
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def default_datasets_dir() -> Path:
    """``$SELFSUP_DATASETS``, else ``../shared/datasets`` next to the project (tests and benchmarks)."""
    if "SELFSUP_DATASETS" in os.environ:
        return Path(os.environ["SELFSUP_DATASETS"])
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _split_indices(n: int, split: str, test_fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    return np.sort(order[n_test:] if split == "train" else order[:n_test])


def _gray_to_rgb_tensor(array: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 3, H, W) uint8."""
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def load_digits_data(split: str) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = _split_indices(len(digits.images), split)
    images = np.rint(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    return ImageData(name=f"digits-{split}", images=_gray_to_rgb_tensor(images),
                     labels=torch.from_numpy(digits.target[index].astype(np.int64)),
                     classes=[str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()  # writable


def find_fashion_mnist() -> Path:
    candidates = [os.environ["SELFSUP_FASHION_MNIST"]] if "SELFSUP_FASHION_MNIST" in os.environ else []
    for candidate in [*candidates, *FASHION_MNIST_DIRS]:
        if (Path(candidate) / "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    raise FileNotFoundError(
        "Fashion-MNIST not found in " + ", ".join([*candidates, *FASHION_MNIST_DIRS])
        + ": install it with 'apt-get install dataset-fashion-mnist' or set SELFSUP_FASHION_MNIST")


FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot"]


def load_fashion_mnist_data(split: str) -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train / 10,000 test greyscale 28x28 images."""
    root = find_fashion_mnist()
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return ImageData(name=f"fashion-mnist-{split}", images=_gray_to_rgb_tensor(images),
                     labels=torch.from_numpy(labels.astype(np.int64)), classes=FASHION_MNIST_CLASSES)


def _array_to_nchw(array: np.ndarray, source: str) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8, got {array.dtype}")
    if array.ndim == 3:
        return _gray_to_rgb_tensor(array)
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        array = np.moveaxis(array, -1, 1)
    if array.ndim != 4 or array.shape[1] not in (1, 3, 4):
        raise ValueError(f"{source}: expected images (N, H, W), (N, H, W, C) or (N, C, H, W), "
                         f"got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return tensor[:, :3].contiguous()


def _array_labels(labels: np.ndarray, count: int, path: Path) -> torch.Tensor:
    """The ``labels`` array of an .npz as int64 (N,): class indices 0..K-1, one per image.

    (N, 1) is squeezed to (N,); integer-valued floats (1.0) are taken as integers. Anything else raises
    a ValueError naming the file, the shape or values found and what is expected.
    """
    expected = f"expected one integer class index (0..K-1) per image, shape ({count},)"
    if labels.ndim == 2 and labels.shape == (count, 1):
        labels = labels[:, 0]
    if labels.ndim != 1:
        one_hot = (labels.ndim == 2 and labels.shape[0] == count and labels.shape[1] > 1
                   and labels.dtype.kind in "biuf" and bool(np.isin(labels, (0, 1)).all()))
        hint = "; these look one-hot: save labels.argmax(axis=1) instead" if one_hot else ""
        raise ValueError(f"{path}: 'labels' has shape {labels.shape}; {expected}{hint}")
    if len(labels) != count:
        raise ValueError(f"{path}: 'labels' has {len(labels)} entries for {count} images; {expected}")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (np.floor(labels) != labels)
        if bad.any():
            raise ValueError(f"{path}: 'labels' ({labels.dtype}) holds non-integer values such as "
                             f"{labels[bad][0].item()}; {expected}")
    elif labels.dtype.kind not in "biu":
        raise ValueError(f"{path}: 'labels' has dtype {labels.dtype}; {expected}")
    if count and labels.min() < 0:
        raise ValueError(f"{path}: 'labels' has negative values (smallest {labels.min()}); {expected}")
    if count and labels.max() >= MAX_ARRAY_CLASSES:
        raise ValueError(f"{path}: 'labels' has values up to {labels.max()}; {expected}, with K at most "
                         f"{MAX_ARRAY_CLASSES} (renumber the classes 0..K-1)")
    return torch.from_numpy(labels.astype(np.int64))


def load_array_data(path: Path) -> ImageData:
    """An ``.npz`` with ``images`` (and optionally ``labels``), or an ``.npy`` of images; no pickles.

    Labels are class indices (see :func:`_array_labels`); the classes are named "0" .. "K-1" and matched
    to another data set's by position (``named_classes`` False).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read array file {path}: {error}") from None
    if isinstance(loaded, np.ndarray):
        return ImageData(name=path.stem, images=_array_to_nchw(loaded, str(path)), source=str(path))
    with loaded:
        if "images" not in loaded:
            raise ValueError(f"{path}: an .npz needs an 'images' array (found {list(loaded.keys())})")
        try:
            images = _array_to_nchw(loaded["images"], str(path))
            raw_labels = loaded["labels"] if "labels" in loaded else None
        except ValueError as error:  # e.g. an object array, refused without pickles
            raise ValueError(f"cannot read array file {path}: {error}") from None
    labels = _array_labels(raw_labels, len(images), path) if raw_labels is not None else None
    classes = [str(c) for c in range(int(labels.max()) + 1)] if labels is not None and len(labels) else None
    return ImageData(name=path.stem, images=images, labels=labels, classes=classes, source=str(path))


def load_image_data(spec: str, split: str = "train", skip_bad_images: bool = False,
                    progress: bool = True) -> ImageData:
    """Resolve a data setting: a built-in name (``digits``, ``fashion-mnist``), an array file, or a folder.

    ``split`` ("train" or "test") applies to built-in sets only.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec == "digits":
        return load_digits_data(split)
    if spec == "fashion-mnist":
        return load_fashion_mnist_data(split)
    path = Path(spec).expanduser()
    if path.suffix in (".npz", ".npy") and path.is_file():
        return load_array_data(path)
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) "
                                "nor an existing folder or .npz/.npy file")
    return load_folder_data(path, skip_bad_images=skip_bad_images, progress=progress)


def load_test_split(train_spec: str, test_spec: str | None, skip_bad_images: bool = False, *,
                    progress: bool = False) -> ImageData | None:
    """The test split that goes with the data setting ``train_spec``: ``test_spec`` when given, else the
    built-in set's own test split (``BUILTIN_DATASETS``), else None (a folder or array file has none).

    It only loads; the caller matches the labels to the training data with :func:`match_classes`.
    """
    if test_spec is not None:
        return load_image_data(test_spec, "test", skip_bad_images, progress=progress)
    if train_spec in BUILTIN_DATASETS:
        return load_image_data(train_spec, "test")
    return None
