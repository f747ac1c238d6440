"""The BYOL target network: frozen deep copy, EMA rule (parameters and BatchNorm buffers), schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.methods import cosine_momentum, ema_update_, frozen_copy


def _small_network() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def _online_and_target() -> tuple[nn.Sequential, nn.Module]:
    """An online network and a target that has drifted away from it (parameters and buffers)."""
    torch.manual_seed(0)
    online = _small_network()
    target = frozen_copy(online)
    with torch.no_grad():
        for parameter in online.parameters():
            parameter.add_(torch.randn_like(parameter))
    online(torch.randn(8, 6) * 3 + 1)  # moves online's running statistics, 1 batch tracked
    target(torch.randn(8, 6))
    target(torch.randn(8, 6))  # the target's own statistics, 2 batches tracked
    return online, target


def test_frozen_copy_is_deep_and_frozen() -> None:
    online = _small_network()
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for (name, p_online), (_, p_target) in zip(online.state_dict().items(), target.state_dict().items(),
                                                  strict=True):
        assert torch.equal(p_online, p_target), name
        assert p_online.data_ptr() != p_target.data_ptr(), name
    with torch.no_grad():
        online[0].weight.add_(1.0)
        online[1].running_mean.add_(1.0)
    assert not torch.equal(online[0].weight, target[0].weight)
    assert not torch.equal(online[1].running_mean, target[1].running_mean)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.996, 1.0])
def test_ema_update_parameters(momentum: float) -> None:
    online, target = _online_and_target()
    expected = {name: momentum * xi.double() + (1 - momentum) * theta.double()
                for (name, xi), theta in zip(target.named_parameters(), online.parameters(), strict=True)}
    online_before = {name: p.detach().clone() for name, p in online.named_parameters()}
    ema_update_(target, online, momentum)
    for name, parameter in target.named_parameters():
        torch.testing.assert_close(parameter.double(), expected[name], rtol=0, atol=1e-6)
        assert not parameter.requires_grad
    for name, parameter in online.named_parameters():
        assert torch.equal(parameter, online_before[name]), f"online {name} was modified"


def test_ema_update_batchnorm_buffers_follow() -> None:
    online, target = _online_and_target()
    momentum = 0.9
    online_bn, target_bn = online[1], target[1]
    assert int(target_bn.num_batches_tracked) == 2 and int(online_bn.num_batches_tracked) == 1
    expected_mean = momentum * target_bn.running_mean + (1 - momentum) * online_bn.running_mean
    expected_var = momentum * target_bn.running_var + (1 - momentum) * online_bn.running_var
    ema_update_(target, online, momentum)
    torch.testing.assert_close(target_bn.running_mean, expected_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(target_bn.running_var, expected_var, rtol=0, atol=1e-6)
    assert int(target_bn.num_batches_tracked) == 1  # integer buffers are copied, not averaged
    assert target_bn.num_batches_tracked.dtype == torch.long


def test_ema_update_rejects_bad_momentum_and_mismatched_networks() -> None:
    online, target = _online_and_target()
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(target, online, 1.5)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(target, online, -0.1)
    with pytest.raises(ValueError, match="parameter"):
        ema_update_(nn.Linear(6, 5), online, 0.5)


def test_cosine_momentum_endpoints_and_shape() -> None:
    total = 100
    values = [cosine_momentum(step, total, base=0.99) for step in range(total + 1)]
    assert values[0] == pytest.approx(0.99, abs=1e-15)
    assert values[-1] == pytest.approx(1.0, abs=1e-15)
    assert all(later >= earlier for earlier, later in zip(values, values[1:], strict=False))
    step = 37
    assert values[step] == pytest.approx(1 - (1 - 0.99) * (math.cos(math.pi * step / total) + 1) / 2,
                                         abs=1e-15)
    assert values[total // 2] == pytest.approx(0.995, abs=1e-12)  # halfway between base and 1


def test_cosine_momentum_default_base_is_byol() -> None:
    assert cosine_momentum(0, 10) == pytest.approx(0.996, abs=1e-15)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0, 0)
