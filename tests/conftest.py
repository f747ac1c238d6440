"""Shared fixtures: real data sets from ../shared/datasets (or $SELFSUP_DATASETS).

Where a data set is missing, tests that need it skip with a message naming the path; under CI
(CI=true) a missing data set is a failure instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from selfsup.data.datasets import default_datasets_dir

# The tests' models are tiny: one intra-op thread avoids thread hand-off overhead, which dominates on a
# busy 2-core machine (measured 9x on a 16-step run). Subprocess tests set their own thread counts.
torch.set_num_threads(1)


def require_dataset(relative: str) -> Path:
    path = default_datasets_dir() / relative
    if not path.exists():
        message = f"data set missing: {path} (set SELFSUP_DATASETS to the folder holding it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def cifar10_root() -> Path:
    return require_dataset("cifar10")


@pytest.fixture
def pennfudan_root() -> Path:
    return require_dataset("pennfudan")


@pytest.fixture
def cifar_subset(tmp_path: Path, cifar10_root: Path):
    """A tiny ImageFolder copy of CIFAR-10 (3 classes): train 24 and test 12 images a class."""
    import shutil

    def make(split: str, per_class: int) -> Path:
        for class_dir in sorted((cifar10_root / split).iterdir())[:3]:
            target = tmp_path / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy(image, target / image.name)
        return tmp_path / split

    return make("train", 24), make("test", 12)
