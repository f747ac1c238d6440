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


def pretrain_config(**values):
    """A PretrainConfig from flat settings, the method's options among them (``projection_dim=32``): those go
    into ``method_args``. The tests' helpers give every method the same tiny heads, so an option the chosen
    method does not have (BYOL's predictor size for SimCLR) is left out."""
    import dataclasses

    from selfsup.config import PretrainConfig
    from selfsup.methods import method_class

    method = values.get("method", PretrainConfig.method)
    all_options = {f.name for cls in __import__("selfsup.methods", fromlist=["METHODS"]).METHODS.values()
                   for f in dataclasses.fields(cls.Settings)}
    own = {f.name for f in dataclasses.fields(method_class(method).Settings)}
    method_args = dict(values.pop("method_args", None) or {})
    for name in sorted(all_options & set(values)):
        value = values.pop(name)
        if name in own:
            method_args[name] = value
    return PretrainConfig(**values, method_args=method_args)
