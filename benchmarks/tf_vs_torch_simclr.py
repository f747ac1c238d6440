"""TensorFlow SimCLR (selfsup.tf) against PyTorch SimCLR (selfsup.train.loop) with the same settings.

Both pretrain on the same CIFAR-10 subset (same epochs, batch, LARS learning rate and warmup + cosine
schedule, temperature, augmentation recipe, ResNet-18 with the CIFAR stem at the same width), then
both encoders' features go through the same weighted kNN (selfsup.eval.knn: cosine, k=200, T=0.1)
on a CIFAR-10 test subset. Prints a side-by-side table and one JSON line.

    python benchmarks/tf_vs_torch_simclr.py --train-per-class 500 --test-per-class 200 --epochs 3

The data come from ../shared/datasets/cifar10 (or $SELFSUP_DATASETS/cifar10), ImageFolder of JPEGs.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import selfsup.tf  # noqa: F401, I001  # before anything imports TensorFlow (see selfsup/tf/__init__.py)
from selfsup.config import PretrainConfig
from selfsup.data.datasets import ImageData, default_datasets_dir
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.models.backbones import ResNetBackbone
from selfsup.pipeline import pretrain
from selfsup.tf.models import resnet18 as keras_resnet18
from selfsup.tf.train import channel_stats, extract_features_tf, pretrain_simclr_tf


def load_cifar_split(root: Path, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images (sorted by name) of each class: uint8 (N, 32, 32, 3), labels (N,)."""
    class_dirs = sorted(d for d in (root / split).iterdir() if d.is_dir())
    if not class_dirs:
        raise FileNotFoundError(f"no class folders under {root / split}")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def to_image_data(images: np.ndarray) -> ImageData:
    return ImageData(name="cifar10", images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--base-lr", type=float, default=0.3, help="LARS lr per 256 images (SimCLR's)")
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--color-strength", type=float, default=0.5, help="SimCLR's CIFAR-10 value")
    parser.add_argument("--knn-k", type=int, default=200)
    parser.add_argument("--knn-temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=default_datasets_dir() / "cifar10")
    args = parser.parse_args()

    train_images, train_labels = load_cifar_split(args.data, "train", args.train_per_class)
    test_images, test_labels = load_cifar_split(args.data, "test", args.test_per_class)
    mean, std = channel_stats(train_images)
    size = train_images.shape[1]
    steps = args.epochs * (len(train_images) // args.batch_size)
    print(f"CIFAR-10 subset: {len(train_images)} train / {len(test_images)} test images, {size} px; "
          f"{args.epochs} epochs x batch {args.batch_size} = {steps} steps each; mean {mean} std {std}")

    def score(features_of) -> float:
        """The same kNN for both frameworks, on numpy features."""
        train_features, test_features = features_of(train_images), features_of(test_images)
        return knn_accuracy(torch.as_tensor(train_features), torch.as_tensor(train_labels),
                            torch.as_tensor(test_features), torch.as_tensor(test_labels),
                            k=args.knn_k, temperature=args.knn_temperature)

    def torch_features(backbone):
        return lambda images: extract_features(backbone, to_image_data(images), size, mean, std).numpy()

    def tf_features(encoder):
        return lambda images: extract_features_tf(encoder, images, mean, std)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data_file = Path(scratch) / "train.npz"
        np.savez(data_file, images=train_images, labels=train_labels)
        config = PretrainConfig(
            method="simclr", data=str(data_file), out=str(Path(scratch) / "torch"), image_size=size,
            backbone="resnet18", width=args.width, cifar_stem=True,
            method_args={"temperature": args.temperature, "color_strength": args.color_strength},
            epochs=args.epochs, batch_size=args.batch_size,
            optimizer="lars", base_lr=args.base_lr, weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, online_probe=False, eval_at_end=False, progress=False,
            device="cpu", seed=args.seed)
        start = time.perf_counter()
        torch_result = pretrain(config, log=lambda *_: None)
        seconds = time.perf_counter() - start
    results["pytorch"] = {"seconds": seconds, "steps": torch_result.steps,
                          "knn": score(torch_features(torch_result.backbone.cpu()))}

    start = time.perf_counter()
    encoder = pretrain_simclr_tf(
        train_images, epochs=args.epochs, batch_size=args.batch_size, image_size=size,
        backbone="resnet18", width=args.width, cifar_stem=True, temperature=args.temperature,
        base_lr=args.base_lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        color_strength=args.color_strength, mean=mean, std=std, seed=args.seed, verbose=0)
    seconds = time.perf_counter() - start
    results["tensorflow"] = {"seconds": seconds, "steps": steps, "knn": score(tf_features(encoder))}

    # Random initialisation in each framework: how much of the accuracy pretraining added.
    torch.manual_seed(args.seed)
    random_torch = ResNetBackbone("resnet18", cifar_stem=True, width=args.width)
    results["pytorch"]["knn_random_init"] = score(torch_features(random_torch))
    random_keras = keras_resnet18(size, width=args.width, cifar_stem=True)
    results["tensorflow"]["knn_random_init"] = score(tf_features(random_keras))

    print(f"\n{'framework':<12}{'kNN top-1 %':>13}{'random init %':>15}{'steps':>7}{'train s':>9}"
          f"{'s/step':>8}")
    for name, row in results.items():
        print(f"{name:<12}{row['knn']:>13.2f}{row['knn_random_init']:>15.2f}{row['steps']:>7}"
              f"{row['seconds']:>9.0f}{row['seconds'] / max(row['steps'], 1):>8.2f}")
    difference = results["tensorflow"]["knn"] - results["pytorch"]["knn"]
    time_ratio = results["tensorflow"]["seconds"] / results["pytorch"]["seconds"]
    print(f"TensorFlow - PyTorch kNN: {difference:+.2f} points (bar: within 3); "
          f"training time TensorFlow / PyTorch: {time_ratio:.2f}x")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(json.dumps({
        "benchmark": "tf_vs_torch_simclr", "args": settings, "train_images": len(train_images),
        "test_images": len(test_images), "results": results,
        "knn_difference_tf_minus_torch": round(difference, 2),
        "time_ratio_tf_over_torch": round(time_ratio, 3),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
