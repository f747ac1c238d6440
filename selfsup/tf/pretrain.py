"""``selfsup pretrain --method simclr --framework tensorflow``: the same settings and data sources as the
PyTorch loop, trained by :func:`selfsup.tf.train.pretrain_simclr_tf`, evaluated by the same kNN / linear code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from selfsup.config import PretrainConfig, resolve
from selfsup.data.datasets import ImageData, load_image_data, load_test_split, match_classes
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.files import write_json
from selfsup.methods import SimCLR, method_class
from selfsup.provenance import run_record
from selfsup.settings import to_dict
from selfsup.tf.train import channel_stats, extract_features_tf, pretrain_simclr_tf

# Settings of PretrainConfig that the TensorFlow loop implements; any other one away from its default is refused.
_SUPPORTED = {"method", "method_args", "data", "test_data", "out", "image_size", "backbone", "width", "cifar_stem",
              "blur", "epochs", "batch_size", "optimizer", "base_lr", "weight_decay", "warmup_epochs", "seed",
              "progress", "framework", "eval_at_end", "linear_max_iter", "knn_k", "knn_temperature", "report",
              "num_workers", "device", "log_every", "online_probe", "skip_bad_images", "crop_min_scale",
              "tensorboard",  # the Keras loop writes no TensorBoard files: nothing to switch off
              "channels_last"}  # Keras convolutions are NHWC already


def _nhwc(data: ImageData) -> np.ndarray:
    if data.images is None:
        raise ValueError(f"--framework tensorflow needs images that fit in memory (<= 64 px); {data.name} is "
                         "streamed from disk")
    return data.images.permute(0, 2, 3, 1).numpy()


def pretrain_tensorflow(config: PretrainConfig, log=print, command: str | None = None) -> dict | None:
    """Train SimCLR in TensorFlow as ``config`` says; write the encoder weights and the kNN / linear table.
    ``command``: the command line recorded in OUT/config.json (default: this process's)."""
    if method_class(config.method) is not SimCLR:
        raise ValueError("setting 'framework': tensorflow implements SimCLR only; use --method simclr")
    simclr = config.method_args
    defaults = PretrainConfig()
    unsupported = [name for name, value in to_dict(config).items()
                   if name not in _SUPPORTED and value != to_dict(defaults)[name]]
    if unsupported:
        raise ValueError(f"setting(s) {', '.join(unsupported)} are not implemented with --framework tensorflow")
    if config.optimizer not in ("lars", "auto"):
        raise ValueError("setting 'optimizer': the TensorFlow loop uses LARS only")
    hp = resolve(dataclasses.replace(config, optimizer="lars"))
    data = load_image_data(config.data, "train", config.skip_bad_images, progress=config.progress)
    images = _nhwc(data)
    mean, std = channel_stats(images)
    image_size = config.image_size or max(data.image_side, 16)
    log(f"simclr (TensorFlow) on {data.name}: {len(data)} images at {image_size} px, {config.epochs} epochs")
    encoder = pretrain_simclr_tf(
        images, epochs=config.epochs, batch_size=config.batch_size, image_size=image_size,
        backbone=config.backbone, width=config.width, cifar_stem=config.cifar_stem,
        temperature=simclr.temperature, base_lr=hp.base_lr, weight_decay=hp.weight_decay,
        warmup_epochs=config.warmup_epochs, color_strength=simclr.color_strength, blur=config.blur,
        crop_min_scale=config.crop_min_scale, mean=mean,
        std=std, projection_hidden_dim=simclr.projection_hidden_dim, projection_dim=simclr.projection_dim,
        gather_distributed=simclr.gather_distributed, seed=config.seed, verbose=1 if config.progress else 0)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_weights(str(out / "encoder.weights.h5"))
    record = run_record(command, mean, std, f"the training data, {data.name} (measured on its images in memory)")
    write_json(out / "config.json", {**to_dict(config), "image_size": image_size, "mean": list(mean),
                                     "std": list(std), "run": record})
    if not config.eval_at_end or data.labels is None:
        return None
    test = load_test_split(config.data, config.test_data, config.skip_bad_images)
    if test is None:
        log("no labelled test data: skipping the kNN / linear table (give --test-data)")
        return None
    test = match_classes(data, test)
    train_features = torch.from_numpy(extract_features_tf(encoder, images, mean, std, image_size=image_size))
    test_features = torch.from_numpy(extract_features_tf(encoder, _nhwc(test), mean, std, image_size=image_size))
    num_classes = data.num_classes
    knn = knn_accuracy(train_features, data.labels, test_features, test.labels, num_classes, config.knn_k,
                       config.knn_temperature)
    linear = linear_probe_accuracy(train_features, data.labels, test_features, test.labels, num_classes,
                                   max_iter=config.linear_max_iter, seed=config.seed)
    table = {"knn_top1": round(knn, 2), "linear_top1": round(linear, 2), "framework": "tensorflow",
             "train_data": data.name, "test_data": test.name, "knn_k": config.knn_k,
             "knn_temperature": config.knn_temperature}
    write_json(out / "eval.json", table)
    log(f"TensorFlow SimCLR: kNN {knn:.2f}   linear {linear:.2f}   (written to {out / 'eval.json'})")
    return table
