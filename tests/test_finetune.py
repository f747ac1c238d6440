"""Class-balanced label subsets and fine-tuning: balance, determinism, sizes, errors; a short fine-tuning
run on real images beats chance."""

from __future__ import annotations

import pytest
import torch

from selfsup.data.datasets import load_digits_data
from selfsup.data.subsets import stratified_sample, subset_data
from selfsup.eval.finetune import _light_augment, balanced_subset, finetune_accuracy, low_label_table
from selfsup.models import ResNetBackbone


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on 2 shared cores a second thread per op costs more in contention than it gains."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _labels(sizes: list[int]) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_balanced_subset_takes_the_fraction_of_every_class(fraction):
    labels = _labels([1000] * 10)
    indices = balanced_subset(labels, fraction, seed=0)
    counts = torch.bincount(labels[indices], minlength=10)
    assert counts.tolist() == [round(1000 * fraction)] * 10
    assert len(indices.unique()) == len(indices)  # no image twice
    assert torch.equal(indices, indices.sort().values)


def test_balanced_subset_rounds_per_class_and_keeps_one_of_each():
    labels = _labels([300, 50, 7])
    counts = torch.bincount(labels[balanced_subset(labels, 0.1, seed=3)], minlength=3)
    assert counts.tolist() == [30, 5, 1]  # 0.7 rounds to 1; a class is never left out


def test_balanced_subset_is_deterministic_and_depends_on_the_seed():
    labels = _labels([200] * 5)
    first = balanced_subset(labels, 0.1, seed=7)
    assert torch.equal(first, balanced_subset(labels, 0.1, seed=7))
    assert not torch.equal(first, balanced_subset(labels, 0.1, seed=8))


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), True])
def test_balanced_subset_rejects_a_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(_labels([10, 10]), fraction, seed=0)


def test_balanced_subset_rejects_bad_labels():
    with pytest.raises(ValueError, match="1-D integer"):
        balanced_subset(torch.rand(10), 0.5)
    with pytest.raises(ValueError, match="1-D integer"):
        balanced_subset(torch.zeros(2, 5, dtype=torch.long), 0.5)


def test_stratified_sample_keeps_proportions_and_exact_count():
    labels = _labels([500, 300, 200])
    indices = stratified_sample(labels, 101, seed=0)
    assert len(indices) == 101 and len(indices.unique()) == 101
    assert torch.bincount(labels[indices], minlength=3).tolist() == [51, 30, 20]  # 50.5 takes the remainder
    with pytest.raises(ValueError, match="count"):
        stratified_sample(labels, 1001)


def test_light_augment_crops_and_flips_each_image_on_its_own():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).repeat(32, 1, 1, 1)
    out = _light_augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # Every output is a shifted (and maybe mirrored) window of its own padded image.
    for image, result in zip(images[:8], out[:8]):
        padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
        windows = [padded[:, r:r + 8, c:c + 8] for r in range(3) for c in range(3)]
        assert any(torch.equal(result, w) or torch.equal(result, w.flip(-1)) for w in windows)
    assert len({tuple(o.flatten().tolist()) for o in out[::2]}) > 1  # the same image, different draws


def test_finetuning_learns_digits_beyond_chance_and_leaves_the_backbone_alone():
    train, test = load_digits_data("train"), load_digits_data("test")
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    mean, std = (0.3,) * 3, (0.35,) * 3
    # 30% of the labels (400 images), 2 epochs of batch 16: 50 steps, ~40% top-1 from random init.
    accuracy = finetune_accuracy(backbone, train, test, 8, mean, std, epochs=2, batch_size=16, base_lr=0.4,
                                 weight_decay=0.0, train_indices=balanced_subset(train.labels, 0.3), seed=0)
    assert accuracy > 25.0  # chance is 10%
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_low_label_table_uses_balanced_fractions():
    train, test = load_digits_data("train"), load_digits_data("test")
    test = subset_data(test, torch.arange(100))
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    rows = low_label_table(backbone, train, test, 8, (0.3,) * 3, (0.35,) * 3, fractions=(0.1,), finetune_epochs=1,
                           linear_max_iter=5, batch_size=32)
    assert [row["labelled_images"] for row in rows] == [len(balanced_subset(train.labels, 0.1))]
    assert 0 <= rows[0]["linear_top1"] <= 100 and 0 <= rows[0]["finetune_top1"] <= 100


def test_low_label_table_baselines_are_the_reinitialised_backbone_on_the_same_labels():
    from selfsup.eval.table import reinitialized

    train, test = load_digits_data("train"), load_digits_data("test")
    test = subset_data(test, torch.arange(100))
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    settings = dict(fractions=(0.1,), finetune_epochs=1, linear_max_iter=5, batch_size=32, seed=3)
    plain = low_label_table(backbone, train, test, 8, (0.3,) * 3, (0.35,) * 3, **settings)
    with_baselines = low_label_table(backbone, train, test, 8, (0.3,) * 3, (0.35,) * 3, baselines=True, **settings)
    assert {k: with_baselines[0][k] for k in plain[0]} == plain[0]  # the baseline leaves the pretrained row alone
    indices = balanced_subset(train.labels, 0.1, 3)
    expected = finetune_accuracy(reinitialized(backbone, 3), subset_data(train, indices), test, 8, (0.3,) * 3,
                                 (0.35,) * 3, epochs=1, batch_size=32, seed=3)
    assert with_baselines[0]["random_finetune_top1"] == round(expected, 2)
    assert 0 <= with_baselines[0]["random_linear_top1"] <= 100
    from selfsup.eval.features import extract_features

    given = tuple(extract_features(reinitialized(backbone, 3), d, 8, (0.3,) * 3, (0.35,) * 3) for d in (train, test))
    assert low_label_table(backbone, train, test, 8, (0.3,) * 3, (0.35,) * 3, baselines=True, random_features=given,
                           **settings) == with_baselines  # features handed in by `selfsup eval` change nothing
    from selfsup.eval.run import format_low_label_table

    printed = format_low_label_table(with_baselines).splitlines()
    assert "random init" in printed[0] and f"{with_baselines[0]['random_finetune_top1']:.2f}" in printed[2]


def test_finetuning_rejects_unlabelled_data():
    train = load_digits_data("train")
    unlabelled = subset_data(train, torch.arange(10))
    unlabelled.labels = None
    with pytest.raises(ValueError, match="labelled"):
        finetune_accuracy(ResNetBackbone("resnet18", width=0.125), unlabelled, train, 8, (0.5,) * 3, (0.5,) * 3)


def test_eval_command_prints_and_saves_the_low_label_table(tmp_path, capsys):
    import json

    from selfsup.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--method", "simclr", "--data", "digits", "--max-steps", "1", "--epochs", "1",
                 "--width", "0.125", "--projection-hidden-dim", "32", "--projection-dim", "16", "--batch-size", "64",
                 "--no-eval-at-end", "--no-report", "--no-progress", "--out", str(out)]) == 0
    assert main(["eval", "--checkpoint", str(out / "backbone.pt"), "--train-data", "digits", "--no-baselines",
                 "--linear-max-iter", "5", "--low-label-fractions", "0.1", "0.2", "--finetune-epochs", "1",
                 "--batch-size", "32", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tune top-1" in printed and "10%" in printed and "20%" in printed
    rows = json.loads((tmp_path / "eval_digits.json").read_text())["low_label"]
    train_labels = load_digits_data("train").labels
    assert [r["labelled_images"] for r in rows] == [len(balanced_subset(train_labels, f)) for f in (0.1, 0.2)]
    assert main(["eval", "--checkpoint", str(out / "backbone.pt"), "--low-label-fractions", "1.5"]) == 2
    assert "low_label_fractions" in capsys.readouterr().err
