"""SimCLR in TensorFlow (Keras 3), computing the same thing as the PyTorch implementation.

The only part of selfsup that imports TensorFlow; install it with ``pip install selfsup[tensorflow]``.
Each module mirrors its PyTorch counterpart:

    augment.py  selfsup.transforms.views   (the same ViewConfig drives both)
    models.py   selfsup.models             (ResNet encoders, projection head)
    losses.py   selfsup.losses.NTXentLoss  (negatives gathered across tf.distribute replicas)
    optim.py    selfsup.train.optim.LARS, selfsup.schedules.warmup_cosine
    train.py    pretraining loop; features come out as numpy arrays for selfsup.eval

Import the submodules directly (``from selfsup.tf.train import pretrain_simclr_tf``); this package
file only checks that TensorFlow is there and runs Keras on it.
"""

from __future__ import annotations

import os

# Keras 3 picks its backend from this variable when first imported; selfsup.tf needs TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# CUDA builds of torch load Triton, which bundles LLVM as TensorFlow does: loading Triton's library
# after TensorFlow's crashes the process (segmentation fault), so torchvision, which loads it through
# torch._dynamo, comes first. For the same reason, import selfsup.tf before importing tensorflow.
import torchvision  # noqa: F401, I001

try:
    import tensorflow  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("selfsup.tf needs TensorFlow: pip install 'selfsup[tensorflow]' "
                      "(or pip install tensorflow-cpu)") from error

import keras

if keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    raise ImportError(f"selfsup.tf needs Keras on the TensorFlow backend, but KERAS_BACKEND is "
                      f"{keras.backend.backend()!r}; unset it or set KERAS_BACKEND=tensorflow")
