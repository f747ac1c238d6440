"""DINO's rules: multi-crop views (shapes, per-image randomness), the pairing of student and teacher views, the
center and the teacher temperature, the frozen last layer, the teacher's EMA, the weight-normalised head."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import pretrain_config

from selfsup.data.datasets import load_digits_data
from selfsup.losses import DINOLoss
from selfsup.methods import DINO, DINOSettings
from selfsup.methods.dino import dino_views
from selfsup.models import ResNetBackbone
from selfsup.train.build import build_batches
from selfsup.train.optim import build_optimizer, build_scheduler
from selfsup.train.step import TrainingStep

SMALL = DINOSettings(head_hidden_dim=32, bottleneck_dim=16, output_dim=24, local_views=3, local_crop_size=8,
                     teacher_temperature_warmup_epochs=2.0, freeze_last_layer_epochs=1.0)


def _dino(settings: DINOSettings = SMALL) -> DINO:
    torch.manual_seed(0)
    return DINO(ResNetBackbone("resnet18", cifar_stem=True, width=0.125), settings)


def _views(settings: DINOSettings = SMALL, batch: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = [16, 16] + [settings.local_crop_size] * settings.local_views
    return [torch.randn(batch, 3, s, s, generator=generator) for s in sizes]


def test_multi_crop_batches_have_the_recipes_sizes_and_per_image_randomness():
    config = pretrain_config(method="dino", data="digits", image_size=16, batch_size=16, head_hidden_dim=32,
                             bottleneck_dim=16, output_dim=24, local_views=3, progress=False)
    data = load_digits_data("train")
    batches = build_batches(config, data, 16, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    *views, labels = next(batches.epoch(0))
    assert [tuple(v.shape) for v in views] == [(16, 3, 16, 16)] * 2 + [(16, 3, 7, 7)] * 3  # 96/224 of 16 px
    assert labels.shape == (16,)
    for view in views:  # each image its own crop: no two rows alike
        flat = view.flatten(1)
        assert torch.cdist(flat, flat)[~torch.eye(16, dtype=torch.bool)].min() > 0
    assert not torch.equal(views[2], views[3])  # each local view draws its own parameters
    again = next(batches.epoch(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again[:-1]))  # seeded: a resumed run sees the same


def test_view_recipes_follow_the_papers_code_and_crop_min_scale_sets_only_the_global_views():
    first, second, *local = dino_views(DINOSettings(local_views=2), 224, (0.5,) * 3, (0.25,) * 3)
    assert (first.crop_size, second.crop_size, local[0].crop_size) == (224, 224, 96)
    assert first.crop_scale == second.crop_scale == (0.4, 1.0) and local[0].crop_scale == (0.05, 0.4)
    assert (first.blur_probability, second.blur_probability, local[0].blur_probability) == (1.0, 0.1, 0.5)
    assert (first.solarize_probability, second.solarize_probability, local[0].solarize_probability) == (0, 0.2, 0)
    config = pretrain_config(method="dino", data="digits", image_size=16, batch_size=16, local_views=2,
                             crop_min_scale=0.2, progress=False)
    batches = build_batches(config, load_digits_data("train"), 16, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    scales = [augment.config.crop_scale for augment in batches.make_views.augments]
    assert scales == [(0.2, 1.0), (0.2, 1.0), (0.05, 0.4), (0.05, 0.4)]


def test_loss_pairs_every_student_view_with_the_teachers_other_global_view():
    method = _dino()
    method.begin_step(1.0)
    views = _views()
    before = method.criterion.center.clone()
    loss = method(*views).loss
    with torch.no_grad():  # the same forward, written out: teacher on the global views, student on all
        student = [method.head(method.backbone(torch.cat(views[:2])))[0].chunk(2)[i] for i in range(2)]
        student += list(method.head(method.backbone(torch.cat(views[2:])))[0].chunk(3))
        teacher = list(method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))[0].chunk(2))
        reference = DINOLoss(24, 0.055)  # tau_t half-way through a 2-epoch warmup from 0.04 to 0.07
        reference.center.copy_(before)
        reference.eval()
        expected = reference(student, teacher)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    # The center moved once, by eq. 4, towards the mean teacher output of this batch's global views.
    new_center = 0.9 * before + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True)
    assert torch.allclose(method.criterion.center, new_center, atol=1e-6)


def test_teacher_temperature_warms_up_linearly_then_stays():
    method = _dino()
    assert [round(method.teacher_temperature_at(e), 6) for e in (0, 1, 2, 5)] == [0.04, 0.055, 0.07, 0.07]


def _step(method: DINO, steps_per_epoch: int) -> TrainingStep:
    optimizer = build_optimizer("sgd", method.learnable_parameters(), 0.5, 1e-4)
    return TrainingStep(method, optimizer, build_scheduler(optimizer, 10, 0), 10, steps_per_epoch)


def test_last_layer_is_frozen_in_the_first_epoch_and_the_teacher_follows_by_ema():
    method = _dino()
    step = _step(method, steps_per_epoch=2)
    head_before = {k: v.clone() for k, v in method.head.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in method.teacher_head.named_parameters()}
    result = step(_views(seed=1), 0)  # epoch 0: frozen
    assert torch.equal(method.head.last_direction, head_before["last_direction"])
    assert not torch.equal(method.head.mlp[0].weight, head_before["mlp.0.weight"])
    assert result.momentum == pytest.approx(0.996)
    for name, new in method.teacher_head.named_parameters():  # m * before + (1 - m) * student
        expected = 0.996 * teacher_before[name].double() + 0.004 * dict(method.head.named_parameters())[name].double()
        assert torch.allclose(new.double(), expected, atol=1e-7), name
    step(_views(seed=2), 1)  # epoch 0.5: still frozen
    assert torch.equal(method.head.last_direction, head_before["last_direction"])
    step(_views(seed=3), 2)  # epoch 1: the last layer learns
    assert not torch.equal(method.head.last_direction, head_before["last_direction"])
    assert not method.head.last_norm.requires_grad and torch.equal(method.head.last_norm, torch.ones(24, 1))


def test_head_last_layer_is_weight_normalised_with_unit_rows():
    head = _dino(dataclasses.replace(SMALL, norm_last_layer=False)).head
    assert head.last_norm.requires_grad and head.last_layer_parameters() == [head.last_direction, head.last_norm]
    features = torch.randn(5, head.mlp[0].in_features)
    logits, bottleneck = head(features)
    assert torch.allclose(bottleneck.norm(dim=1), torch.ones(5), atol=1e-6)
    weight = F.normalize(head.last_direction, dim=1)  # g = 1 at the start: W = v / ||v||
    assert torch.allclose(logits, bottleneck @ weight.T, atol=1e-6)


def test_settings_are_checked_with_the_setting_named():
    with pytest.raises(ValueError, match="local_crop_scale"):
        DINOSettings(local_crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="student_temperature"):
        DINOSettings(student_temperature=0)
    with pytest.raises(ValueError, match="global views"):
        _dino()(torch.randn(2, 3, 16, 16))
