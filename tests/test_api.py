"""The public Python API: ``import selfsup`` gives every name a user needs, each documented, and stays light."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import selfsup

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_selfsup_does_not_import_torch():
    # dir() and __version__ must not trigger the lazy imports either.
    code = "import selfsup, sys; dir(selfsup); selfsup.__version__; print('torch' in sys.modules)"
    assert _run_python(code) == "False"


def test_version_is_the_package_version():
    assert selfsup.__version__ == importlib.metadata.version("selfsup")


def test_all_lists_exactly_the_lazy_names():
    assert len(selfsup.__all__) == len(set(selfsup.__all__))
    assert set(selfsup.__all__) == {"__version__", *selfsup._LAZY_NAMES}
    assert set(selfsup.__all__) <= set(dir(selfsup))


@pytest.mark.parametrize("name", sorted(selfsup._LAZY_NAMES))
def test_public_name_resolves_and_has_a_docstring(name):
    value = getattr(selfsup, name)
    if name == "METHODS":  # a dict: documented by the package docstrings
        assert "METHODS" in (selfsup.__doc__ or "") and "METHODS" in (selfsup.methods.__doc__ or "")
        return
    # The object's own docstring: not inherited, not the signature dataclasses write when there is none.
    doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
    assert doc and doc.strip(), f"selfsup.{name} has no docstring"
    if dataclasses.is_dataclass(value):
        assert not doc.startswith(f"{value.__name__}("), f"selfsup.{name} has only the generated docstring"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        selfsup.no_such_name  # noqa: B018
    assert not hasattr(selfsup, "NoSuchLoss")


def test_from_import_works():
    from selfsup import BYOL, evaluate, load_backbone, pretrain

    assert BYOL is selfsup.methods.BYOL and callable(pretrain) and callable(load_backbone) and callable(evaluate)


def test_every_method_and_loss_class_is_exported():
    import selfsup.losses
    import selfsup.methods

    assert selfsup.METHODS is selfsup.methods.METHODS
    for module in (selfsup.methods, selfsup.losses):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value):
                assert getattr(selfsup, name, None) is value, f"add {name} to selfsup/__init__.py"
    for method in selfsup.METHODS.values():
        assert getattr(selfsup, method.__name__) is method
        assert getattr(selfsup, method.Settings.__name__) is method.Settings


def test_two_views_of_an_own_batch():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    recipes = selfsup.BYOL.view_recipes(selfsup.BYOLSettings(), 16, (0.5,) * 3, (0.25,) * 3, None)
    assert recipes == selfsup.byol_views(16, (0.5,) * 3, (0.25,) * 3)
    augment = selfsup.BatchedViews(*(selfsup.BatchedViewAugment(recipe) for recipe in recipes))
    view1, view2 = augment(images, torch.Generator().manual_seed(0))
    assert view1.shape == view2.shape == (4, 3, 16, 16) and view1.dtype == torch.float32
    assert not torch.equal(view1, view2)


def test_load_backbone_round_trip_and_refuses_code(tmp_path):
    from selfsup.checkpoints import CheckpointError
    from selfsup.models import backbone_config

    backbone = selfsup.ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    path = tmp_path / "backbone.pt"
    torch.save({"backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone)}, path)
    loaded = selfsup.load_backbone(path)
    assert isinstance(loaded, selfsup.ResNetBackbone) and loaded.feature_dim == backbone.feature_dim
    for key, value in backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone),
                "extra": Path("x")}, unsafe)  # an arbitrary object: refused by weights_only=True
    with pytest.raises(CheckpointError, match="refused"):
        selfsup.load_backbone(unsafe)


def _digits_tensors(split: str, count: int):
    from selfsup.data import load_image_data

    data = load_image_data("digits", split)
    return data.images[:count], data.labels[:count]


def test_evaluate_a_module_on_tensors():
    torch.manual_seed(0)
    backbone = selfsup.ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    backbone.train()
    table = selfsup.evaluate(backbone, _digits_tensors("train", 300), _digits_tensors("test", 100), knn_k=20,
                             linear_max_iter=10, baselines=True)
    assert backbone.training  # the mode is restored
    assert [row["name"] for row in table["rows"]] == ["pretrained", "random init", "raw pixels"]
    for row in table["rows"]:
        assert 0 <= row["knn_top1"] <= 100 and 0 <= row["linear_top1"] <= 100
    assert table["knn_top1"] == table["rows"][0]["knn_top1"]
    assert table["rows"][0]["feature_dim"] == backbone.feature_dim


def test_evaluate_a_checkpoint_on_a_builtin_data_set(tmp_path):
    from selfsup.models import backbone_config

    backbone = selfsup.ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    path = tmp_path / "backbone.pt"
    torch.save({"backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone), "image_size": 16,
                "mean": [0.5] * 3, "std": [0.25] * 3}, path)
    table = selfsup.evaluate(path, "digits", knn_k=20, linear_max_iter=5)
    assert table["train_data"] == "digits-train" and table["test_data"] == "digits-test"
    assert 0 <= table["knn_top1"] <= 100 and 0 <= table["linear_top1"] <= 100


def test_evaluate_needs_test_data_for_tensors():
    with pytest.raises(ValueError, match="test_data is required"):
        selfsup.evaluate(selfsup.ResNetBackbone("resnet18", width=0.125), _digits_tensors("train", 20))
    with pytest.raises(ValueError, match="uint8"):
        images, labels = _digits_tensors("train", 20)
        selfsup.evaluate(selfsup.ResNetBackbone("resnet18", width=0.125), (images.float(), labels),
                         (images, labels))
