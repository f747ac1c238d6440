"""Smoke runs of BYOL and SimCLR: a small ResNet, 32 px images, LARS, three steps each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.losses import BYOLLoss, NTXentLoss
from selfsup.methods import BYOL, SimCLR, cosine_momentum
from selfsup.models import ResNetBackbone
from selfsup.train.optim import build_optimizer

BATCH, SIDE, STEPS = 4, 32, 3
SMALL_HEADS = dict(projection_hidden_dim=32, projection_dim=16)


def _small_backbone() -> ResNetBackbone:
    return ResNetBackbone("resnet18", cifar_stem=True, width=0.125)


def _views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    view1, view2 = torch.randn(2, BATCH, 3, SIDE, SIDE, generator=generator)
    return view1, view2


def _online_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()
            if not name.startswith("target_")}


def _assert_ema_of(new: torch.Tensor, target: torch.Tensor, online: torch.Tensor, momentum: float,
                   name: str) -> None:
    """new == momentum * target + (1 - momentum) * online, exact up to float32 rounding of the two terms
    (the fused foreach ops round differently from an unfused expression, by at most an ulp or so)."""
    if not new.is_floating_point():  # num_batches_tracked: copied from the online network
        assert torch.equal(new, online), name
        return
    first, second = momentum * target.double(), (1 - momentum) * online.double()
    tolerance = 2 * torch.finfo(new.dtype).eps * (first.abs() + second.abs()) + 1e-30
    error = (new.double() - (first + second)).abs()
    assert bool((error <= tolerance).all()), f"{name}: EMA off by {error.max().item():.3g}"


def test_byol_three_steps() -> None:
    torch.manual_seed(0)
    model = BYOL(_small_backbone(), prediction_hidden_dim=32, **SMALL_HEADS)
    optimizer = build_optimizer("lars", model, lr=1.0, weight_decay=1e-6)
    online_start = _online_state(model)

    target_calls: list[tuple[bool, bool]] = []  # (grad enabled, output requires grad) per target forward

    def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
        target_calls.append((torch.is_grad_enabled(), output.requires_grad))

    model.target_projector.register_forward_hook(record)

    for step in range(STEPS):
        output = model(*_views(step))
        assert torch.isfinite(output.loss) and output.loss.ndim == 0
        assert 0.0 <= output.loss.item() <= 4.0
        optimizer.zero_grad()
        output.loss.backward()
        for name, parameter in model.named_parameters():
            if name.startswith("target_"):
                assert parameter.grad is None, f"gradient reached the target: {name}"
            else:
                assert parameter.grad is not None, f"no gradient for {name}"
        optimizer.step()

        momentum = cosine_momentum(step, STEPS, base=0.9)
        pairs = [(model.target_backbone, model.backbone), (model.target_projector, model.projector)]
        before = [({k: v.clone() for k, v in target.state_dict().items()},
                   {k: v.clone() for k, v in online.state_dict().items()}) for target, online in pairs]
        model.update_target(momentum)
        for (target, _), (target_before, online_now) in zip(pairs, before, strict=True):
            for name, new in target.state_dict().items():
                _assert_ema_of(new, target_before[name], online_now[name], momentum, name)
        assert not torch.equal(model.target_backbone.resnet.conv1.weight, before[0][0]["resnet.conv1.weight"])

    assert target_calls == [(False, False)] * (2 * STEPS)  # two views per step, both without autograd
    changed = {name: not torch.equal(p, online_start[name]) for name, p in _online_state(model).items()}
    assert all(changed.values()), [name for name, was_changed in changed.items() if not was_changed]
    assert all(not p.requires_grad for name, p in model.named_parameters() if name.startswith("target_"))


def test_byol_forward_is_the_symmetrized_loss() -> None:
    torch.manual_seed(1)
    model = BYOL(_small_backbone(), prediction_hidden_dim=32, **SMALL_HEADS)
    view1, view2 = _views(10)
    output = model(view1, view2)
    with torch.no_grad():  # train-mode BatchNorm: the same batch gives the same outputs again
        prediction1 = model.predictor(model.projector(model.backbone(view1)))
        prediction2 = model.predictor(model.projector(model.backbone(view2)))
        target1 = model.target_projector(model.target_backbone(view1))
        target2 = model.target_projector(model.target_backbone(view2))
        expected = (BYOLLoss()(prediction1, target2) + BYOLLoss()(prediction2, target1)) / 2
    torch.testing.assert_close(output.loss.detach(), expected)
    assert output.features.shape == (BATCH, model.backbone.feature_dim) and not output.features.requires_grad
    assert [e.shape for e in output.embeddings] == [(BATCH, 16), (BATCH, 16)]


def test_byol_without_predictor() -> None:
    model = BYOL(_small_backbone(), use_predictor=False, **SMALL_HEADS)
    assert isinstance(model.predictor, nn.Identity)
    assert torch.isfinite(model(*_views(0)).loss)


def test_simclr_three_steps() -> None:
    torch.manual_seed(0)
    model = SimCLR(_small_backbone(), temperature=0.2, **SMALL_HEADS)
    optimizer = build_optimizer("lars", model, lr=1.0, weight_decay=1e-6)
    online_start = _online_state(model)
    for step in range(STEPS):
        output = model(*_views(step))
        assert torch.isfinite(output.loss) and output.loss.ndim == 0
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        model.update_target(0.99)  # a no-op, there so a loop can treat methods alike
    changed = {name: not torch.equal(p, online_start[name]) for name, p in _online_state(model).items()}
    assert all(changed.values()), [name for name, was_changed in changed.items() if not was_changed]


def test_simclr_forward_is_ntxent_of_one_pass() -> None:
    torch.manual_seed(1)
    model = SimCLR(_small_backbone(), temperature=0.2, **SMALL_HEADS)
    view1, view2 = _views(10)
    output = model(view1, view2)
    with torch.no_grad():  # one pass over both views, so BatchNorm sees all 2N images
        projections = model.projector(model.backbone(torch.cat([view1, view2])))
        expected = NTXentLoss(0.2)(projections[:BATCH], projections[BATCH:])
    torch.testing.assert_close(output.loss.detach(), expected)
    assert output.features.shape == (BATCH, model.backbone.feature_dim) and not output.features.requires_grad
    torch.testing.assert_close(output.embeddings[0], projections[:BATCH])
    torch.testing.assert_close(output.embeddings[1], projections[BATCH:])


@pytest.mark.parametrize("method", [BYOL, SimCLR])
def test_any_backbone_with_explicit_feature_dim(method: type[nn.Module]) -> None:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 12))  # no feature_dim attribute
    model = method(backbone, feature_dim=12, **SMALL_HEADS)
    output = model(torch.randn(BATCH, 3, 8, 8), torch.randn(BATCH, 3, 8, 8))
    assert torch.isfinite(output.loss) and output.features.shape == (BATCH, 12)
