"""Image data sets: folders (ImageFolder or flat), arrays, and built-in offline sets.

Small images (<= 64 px) are decoded once and kept in memory as a uint8 tensor (N, 3, H, W), which the
training loop augments in batches on the device. Larger images stay on disk as paths and are decoded
by DataLoader workers.
"""

from __future__ import annotations

import gzip
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfsup.data.images import IMAGE_EXTENSIONS, BadImageError, display_path, read_rgb_image, square_resize

SMALL_IMAGE_SIDE = 64
BUILTIN_DATASETS = ("digits", "fashion-mnist")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass
class ImageData:
    """A data set: either ``images`` in memory (uint8, (N, 3, H, W)) or ``paths`` on disk.

    ``labels`` (int64, (N,)) and ``classes`` are None for unlabeled data. ``skipped`` lists files
    left out by ``skip_bad_images``, with the reason.
    """

    name: str
    images: torch.Tensor | None = None
    paths: list[Path] | None = None
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("ImageData needs exactly one of images (in memory) or paths (on disk)")
        if self.images is not None and (self.images.dtype != torch.uint8 or self.images.ndim != 4
                                        or self.images.shape[1] != 3):
            raise ValueError(f"in-memory images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self)} images")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.paths)  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def image_side(self) -> int | None:
        """Side of the in-memory images (None for data on disk)."""
        return int(self.images.shape[-1]) if self.images is not None else None


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


def load_array_data(path: Path) -> ImageData:
    """An ``.npz`` with ``images`` (and optionally ``labels``), or an ``.npy`` of images; no pickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read array file {path}: {error}") from None
    if isinstance(loaded, np.ndarray):
        return ImageData(name=path.stem, images=_array_to_nchw(loaded, str(path)))
    with loaded:
        if "images" not in loaded:
            raise ValueError(f"{path}: an .npz needs an 'images' array (found {list(loaded.keys())})")
        images = _array_to_nchw(loaded["images"], str(path))
        labels = torch.from_numpy(loaded["labels"].astype(np.int64)) if "labels" in loaded else None
    classes = [str(c) for c in range(int(labels.max()) + 1)] if labels is not None and len(labels) else None
    return ImageData(name=path.stem, images=images, labels=labels, classes=classes)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_folder(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """ImageFolder layout (one sub-folder of images per class) or a flat folder of unlabeled images."""
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_dirs = [d for d in class_dirs if _list_images(d)]
    if class_dirs:
        paths, labels = [], []
        for label, class_dir in enumerate(class_dirs):
            files = _list_images(class_dir)
            paths += files
            labels += [label] * len(files)
        return paths, labels, [display_path(d.name) for d in class_dirs]
    paths = _list_images(folder)
    if not paths:
        raise ValueError(f"data folder {folder} has no images (looked for {', '.join(IMAGE_EXTENSIONS)} "
                         "files in it and in its sub-folders)")
    return paths, None, None


def _decode_all(paths: list[Path], side: int, skip_bad_images: bool,
                progress: bool) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    def decode(path: Path) -> np.ndarray | str:
        try:
            return np.asarray(square_resize(read_rgb_image(path), side))
        except BadImageError as error:
            if not skip_bad_images:
                raise
            return str(error)

    images, kept, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(decode, paths, chunksize=256)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(paths), desc="decoding images", unit="img", leave=False)
        for i, result in enumerate(results):
            if isinstance(result, str):
                skipped.append((str(paths[i]), result))
            else:
                images.append(result)
                kept.append(i)
    if not images:
        raise ValueError(f"no usable image among {len(paths)} files ({len(skipped)} skipped as bad)")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), kept, skipped


def load_folder_data(folder: Path, skip_bad_images: bool = False, progress: bool = True,
                     in_memory: bool | None = None) -> ImageData:
    """A folder of images; decoded into memory when its images are small (<= 64 px)."""
    paths, labels, classes = scan_folder(folder)
    if in_memory is None:
        probe_side = None
        for path in paths[:8]:
            try:
                probe_side = max(read_rgb_image(path).size)
                break
            except BadImageError:
                if not skip_bad_images:
                    raise
        in_memory = probe_side is not None and probe_side <= SMALL_IMAGE_SIDE
        side = probe_side
    else:
        side = max(read_rgb_image(paths[0]).size)
    label_tensor = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
    if not in_memory:
        return ImageData(name=display_path(folder.name), paths=paths, labels=label_tensor, classes=classes)
    images, kept, skipped = _decode_all(paths, int(side), skip_bad_images, progress)
    if label_tensor is not None:
        label_tensor = label_tensor[kept]
    return ImageData(name=display_path(folder.name), images=images, labels=label_tensor, classes=classes,
                     skipped=skipped)


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
