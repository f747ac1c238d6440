"""LARS against hand computations, parameter groups, the optimizer builder and the schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.schedules import scaled_learning_rate, warmup_cosine
from selfsup.train.optim import LARS, build_optimizer, parameter_groups

LR, WEIGHT_DECAY, ETA, MOMENTUM = 0.5, 0.1, 0.001, 0.9


def _norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _lars_by_hand(weight: list[float], grads: list[list[float]], lr: float, weight_decay: float,
                  eta: float, momentum: float, clip: bool = False) -> list[list[float]]:
    """Weights after each LARS step, in plain Python: d = g + wd w, r = eta ||w|| / ||d||
    (clipped: r = min(r, lr) / lr), v = momentum v + r d (v starts at r d), w = w - lr v."""
    history, velocity = [], None
    for grad in grads:
        direction = [g + weight_decay * w for g, w in zip(grad, weight, strict=True)]
        ratio = eta * _norm(weight) / _norm(direction)
        if clip:
            ratio = min(ratio, lr) / lr
        scaled = [ratio * d for d in direction]
        if velocity is None:
            velocity = scaled
        else:
            velocity = [momentum * v + s for v, s in zip(velocity, scaled, strict=True)]
        weight = [w - lr * v for w, v in zip(weight, velocity, strict=True)]
        history.append(weight)
    return history


def _plain_momentum_sgd_by_hand(weight: list[float], grads: list[list[float]], lr: float,
                                momentum: float) -> list[list[float]]:
    history, velocity = [], None
    for grad in grads:
        if velocity is None:
            velocity = list(grad)
        else:
            velocity = [momentum * v + g for v, g in zip(velocity, grad, strict=True)]
        weight = [w - lr * v for w, v in zip(weight, velocity, strict=True)]
        history.append(weight)
    return history


def _step_with(optimizer: torch.optim.Optimizer, parameter: torch.Tensor, grad: list[float]) -> None:
    parameter.grad = torch.tensor(grad, dtype=parameter.dtype).view_as(parameter)
    optimizer.step()


WEIGHT = [0.5, -1.0, 2.0, 0.25, -0.75, 1.5]
GRADS = [[0.1, 0.2, -0.3, 0.05, 0.4, -0.1], [-0.2, 0.1, 0.3, -0.4, 0.0, 0.25]]


def test_lars_trust_ratio_one_step() -> None:
    weight = nn.Parameter(torch.tensor(WEIGHT, dtype=torch.float64).view(2, 3))
    optimizer = LARS([weight], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, trust_coefficient=ETA)
    _step_with(optimizer, weight, GRADS[0])
    start = torch.tensor(WEIGHT, dtype=torch.float64)
    decayed_grad = torch.tensor(GRADS[0], dtype=torch.float64) + WEIGHT_DECAY * start
    trust_ratio = ETA * _norm(WEIGHT) / _norm(decayed_grad.tolist())
    update = start - weight.detach().flatten()
    torch.testing.assert_close(update, LR * trust_ratio * decayed_grad, rtol=1e-12, atol=0)


def test_lars_two_steps_with_momentum() -> None:
    weight = nn.Parameter(torch.tensor(WEIGHT, dtype=torch.float64).view(2, 3))
    optimizer = LARS([weight], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, trust_coefficient=ETA)
    expected = _lars_by_hand(WEIGHT, GRADS, LR, WEIGHT_DECAY, ETA, MOMENTUM)
    for grad, weight_after in zip(GRADS, expected, strict=True):
        _step_with(optimizer, weight, grad)
        torch.testing.assert_close(weight.detach().flatten(), torch.tensor(weight_after, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("eta", [0.02, 0.5])
def test_lars_clip_caps_the_step_at_sgds(eta: float) -> None:
    """Clipped, a layer's step is min(eta ||w|| / ||d||, lr) d. eta 0.02: the trust ratio (about 0.1 here) is
    under lr 0.5, so the step is the ratio's alone, as unclipped LARS at lr 1; eta 0.5: the ratio (about 2.5)
    is over it, so the step is plain momentum SGD on d = g + wd w at lr 0.5."""
    weight = nn.Parameter(torch.tensor(WEIGHT, dtype=torch.float64).view(2, 3))
    optimizer = LARS([weight], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, trust_coefficient=eta,
                     clip=True)
    clipped = _lars_by_hand(WEIGHT, GRADS, LR, WEIGHT_DECAY, eta, MOMENTUM, clip=True)
    for grad, weight_after in zip(GRADS, clipped, strict=True):
        _step_with(optimizer, weight, grad)
        torch.testing.assert_close(weight.detach().flatten(), torch.tensor(weight_after, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-15)
    if eta == 0.02:
        expected = _lars_by_hand(WEIGHT, GRADS, 1.0, WEIGHT_DECAY, eta, MOMENTUM)
    else:
        decayed = [[g + WEIGHT_DECAY * w for g, w in zip(GRADS[0], WEIGHT, strict=True)]]
        expected = _plain_momentum_sgd_by_hand(WEIGHT, decayed, LR, MOMENTUM)  # one step: the decay is w's
        clipped = clipped[:1]
    for got, want in zip(clipped, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_lars_rejects_a_trust_coefficient_of_zero() -> None:
    with pytest.raises(ValueError, match="trust coefficient"):
        LARS([nn.Parameter(torch.ones(2))], lr=0.1, trust_coefficient=0.0)


@pytest.mark.parametrize(("lr", "clip"), [(LR, False), (2.0, True)])
def test_lars_zero_weight_uses_ratio_one(lr: float, clip: bool) -> None:
    """Nothing to adapt to: plain SGD's step, clipped or not (lr 2 > 1 would show a clip applied to r = 1)."""
    weight = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    optimizer = LARS([weight], lr=lr, weight_decay=WEIGHT_DECAY, clip=clip)
    _step_with(optimizer, weight, GRADS[0])
    torch.testing.assert_close(weight.detach().flatten(), -lr * torch.tensor(GRADS[0], dtype=torch.float64))


def test_lars_excluded_group_is_plain_momentum_sgd() -> None:
    bias = nn.Parameter(torch.tensor(WEIGHT, dtype=torch.float64))
    reference = nn.Parameter(bias.detach().clone())
    optimizer = LARS([{"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
                     lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sgd = torch.optim.SGD([reference], lr=LR, momentum=MOMENTUM)
    expected = _plain_momentum_sgd_by_hand(WEIGHT, GRADS, LR, MOMENTUM)
    for grad, weight_after in zip(GRADS, expected, strict=True):
        _step_with(optimizer, bias, grad)
        _step_with(sgd, reference, grad)
        torch.testing.assert_close(bias.detach(), torch.tensor(weight_after, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(bias.detach(), reference.detach(), rtol=1e-12, atol=1e-15)


def test_lars_from_build_optimizer_excludes_biases_and_norms() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    optimizer = build_optimizer("lars", model, lr=LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: torch.randn(2, *p.shape, dtype=torch.float64) for name, p in model.named_parameters()}
    for step in range(2):
        for name, parameter in model.named_parameters():
            parameter.grad = grads[name][step].clone()
        optimizer.step()
    for name, parameter in model.named_parameters():
        weight, grad_lists = start[name].flatten().tolist(), [g.flatten().tolist() for g in grads[name]]
        if parameter.ndim <= 1:  # "0.bias", "1.weight", "1.bias": plain momentum SGD, no decay
            expected = _plain_momentum_sgd_by_hand(weight, grad_lists, LR, MOMENTUM)[-1]
        else:  # "0.weight": decayed and trust-ratio adapted, with LARS's default eta 0.001
            expected = _lars_by_hand(weight, grad_lists, LR, WEIGHT_DECAY, ETA, MOMENTUM)[-1]
        torch.testing.assert_close(parameter.detach().flatten(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-15, msg=name)


def test_lars_skips_parameters_without_gradient_and_rejects_negative_lr() -> None:
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    optimizer = LARS([used, unused], lr=0.1)
    used.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(unused.detach(), torch.ones(3)) and not torch.equal(used.detach(), torch.ones(3))
    with pytest.raises(ValueError, match="learning rate"):
        LARS([used], lr=-1.0)


def _model_with_frozen_part() -> tuple[nn.Module, list[nn.Parameter], list[nn.Parameter]]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5),
                          nn.LayerNorm(5), nn.Linear(5, 2, bias=False))
    frozen = nn.Linear(2, 2)
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    model.append(frozen)
    weights = [model[0].weight, model[3].weight, model[5].weight]
    excluded = [model[0].bias, model[1].weight, model[1].bias, model[3].bias, model[4].weight, model[4].bias]
    return model, weights, excluded


def test_parameter_groups_split_and_skip_frozen() -> None:
    model, weights, excluded = _model_with_frozen_part()
    decayed_group, excluded_group = parameter_groups(model, weight_decay=1e-6)
    assert [id(p) for p in decayed_group["params"]] == [id(p) for p in weights]
    assert [id(p) for p in excluded_group["params"]] == [id(p) for p in excluded]
    assert decayed_group["weight_decay"] == 1e-6 and excluded_group["weight_decay"] == 0.0
    assert decayed_group["lars_exclude"] is False and excluded_group["lars_exclude"] is True


@pytest.mark.parametrize(("name", "optimizer_type"),
                         [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name: str, optimizer_type: type) -> None:
    model, weights, excluded = _model_with_frozen_part()
    optimizer = build_optimizer(name, model, lr=0.3, weight_decay=1e-4, momentum=0.8)
    assert type(optimizer) is optimizer_type
    decayed_group, excluded_group = optimizer.param_groups
    assert len(decayed_group["params"]) == len(weights) and len(excluded_group["params"]) == len(excluded)
    assert (decayed_group["weight_decay"], excluded_group["weight_decay"]) == (1e-4, 0.0)
    assert decayed_group["lr"] == excluded_group["lr"] == 0.3
    if name in ("lars", "sgd"):
        assert decayed_group["momentum"] == 0.8
    if name == "sgd":
        assert decayed_group["nesterov"] is False
    frozen_ids = {id(p) for p in model[-1].parameters()}
    assert not frozen_ids & {id(p) for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_grouped_optimizer_kernels_compute_what_the_per_tensor_loop_does(name: str) -> None:
    # build_optimizer asks for foreach (faster on CPU); the loop torch takes by default is the reference.
    generator = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    reference = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(name, model, lr=0.1, weight_decay=5e-4)
    assert all(group["foreach"] for group in optimizer.param_groups)
    loop_params = [nn.Parameter(p.clone()) for p in reference]
    groups = [{"params": [q for q, p in zip(loop_params, model.parameters(), strict=True) if p in set(g["params"])],
               "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
    loop = (torch.optim.SGD(groups, lr=0.1, momentum=0.9, foreach=False) if name == "sgd"
            else torch.optim.AdamW(groups, lr=0.1, foreach=False))
    for _ in range(4):
        for p, q in zip(model.parameters(), loop_params, strict=True):
            grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.grad, q.grad = grad, grad.clone()
        optimizer.step()
        loop.step()
    for p, q in zip(model.parameters(), loop_params, strict=True):
        assert torch.equal(p, q)


def test_build_optimizer_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer("adam", nn.Linear(2, 2), lr=0.1, weight_decay=0.0)  # type: ignore[arg-type]


def test_warmup_cosine_values() -> None:
    total, warmup = 100, 10
    factors = [warmup_cosine(step, total, warmup) for step in range(total + 1)]
    assert factors[0] == pytest.approx(1 / warmup)
    assert factors[warmup - 1] == pytest.approx(1.0)  # warmup ends at the peak ...
    assert factors[warmup] == pytest.approx(1.0)  # ... where the cosine starts
    assert factors[total] == pytest.approx(0.0, abs=1e-15)
    middle = warmup + (total - warmup) // 2
    assert factors[middle] == pytest.approx(0.5)
    step = 30
    assert factors[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))
    increasing, decreasing = factors[:warmup], factors[warmup:]
    assert all(b > a for a, b in zip(increasing, increasing[1:], strict=False))
    assert all(b <= a for a, b in zip(decreasing, decreasing[1:], strict=False))
    assert warmup_cosine(total + 50, total, warmup) == pytest.approx(0.0, abs=1e-15)  # stays at the end value


def test_warmup_cosine_final_factor_and_no_warmup() -> None:
    assert warmup_cosine(100, 100, 10, final_factor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 100, 0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0, 0)


def test_scaled_learning_rate() -> None:
    assert scaled_learning_rate(0.3, 4096) == pytest.approx(4.8)  # SimCLR's ImageNet setting
    assert scaled_learning_rate(0.2, 4096) == pytest.approx(3.2)  # BYOL's
    assert scaled_learning_rate(1.0, 256) == pytest.approx(1.0)
    assert scaled_learning_rate(1.0, 128) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["lars", "sgd"])
def test_predictor_lr_multiplier_scales_only_the_predictors_step(name: str) -> None:
    from selfsup.methods import BYOL

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
    view1, view2 = torch.randn(5, 12), torch.randn(5, 12)
    start = {k: v.clone() for k, v in BYOL(backbone, feature_dim=6, projection_hidden_dim=8, projection_dim=4,
                                           prediction_hidden_dim=8).state_dict().items()}
    moved = {}
    for multiplier in (1.0, 10.0):
        model = BYOL(backbone, feature_dim=6, projection_hidden_dim=8, projection_dim=4, prediction_hidden_dim=8,
                     predictor_lr_multiplier=multiplier)
        model.load_state_dict(start)
        optimizer = build_optimizer(name, model.learnable_parameters(), lr=0.2, weight_decay=1e-4)
        # a schedule scales every group alike, so the ratio holds at every step
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
        assert sorted({g["lr"] for g in optimizer.param_groups}) == sorted({0.1, 0.1 * multiplier})
        optimizer.zero_grad()
        model(view1, view2).loss.backward()
        optimizer.step()
        scheduler.step()
        moved[multiplier] = {k: (v.detach().double() - start[k].double()) for k, v in model.named_parameters()
                             if v.requires_grad}
    for key, step in moved[1.0].items():
        factor = 10.0 if key.startswith("predictor.") else 1.0
        # float32 weights: a step of ~1e-3 of a weight is resolved to ~1e-4 of itself
        torch.testing.assert_close(moved[10.0][key], factor * step, rtol=1e-3, atol=1e-7, msg=key)
    assert any(step.abs().max() > 0 for key, step in moved[1.0].items() if key.startswith("predictor."))


def test_predictor_lr_multiplier_needs_a_predictor() -> None:
    from selfsup.methods import BYOL

    with pytest.raises(ValueError, match="predictor_lr_multiplier"):
        BYOL(nn.Linear(2, 2), feature_dim=2, use_predictor=False, predictor_lr_multiplier=10.0)
