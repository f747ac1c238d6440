"""Optimizers: LARS (with the usual exclusions), SGD and AdamW, and their parameter groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from selfsup.schedules import warmup_cosine

OptimizerName = Literal["lars", "sgd", "adamw"]


def parameter_groups(model: nn.Module | list[dict], weight_decay: float, lr: float | None = None) -> list[dict]:
    """Each group split in two: weights (decayed, LARS-adapted) and biases + normalization parameters (neither).

    ``model`` is a module (one group of its trainable parameters) or a method's groups
    (:meth:`selfsup.methods.Method.learnable_parameters`: dicts with ``params`` and optionally ``lr_multiplier``
    and ``scheduled``); with ``lr`` given, each group's rate is ``lr`` times its multiplier.

    Biases and BatchNorm/LayerNorm parameters are every parameter with one dimension, as in SimCLR's
    and BYOL's code (both exclude them from weight decay and from the LARS trust ratio).
    Frozen parameters (a BYOL target network) are left out.
    """
    groups = [{"params": list(model.parameters())}] if isinstance(model, nn.Module) else model
    split = []
    for group in groups:
        extra = {key: value for key, value in group.items() if key not in ("params", "lr_multiplier")}
        if lr is not None:
            extra["lr"] = lr * group.get("lr_multiplier", 1.0)
        trainable = [p for p in group["params"] if p.requires_grad]
        split += [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay,
                   "lars_exclude": False, **extra},
                  {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0, "lars_exclude": True,
                   **extra}]
    # Empty groups are dropped, except in the plain case, whose two groups callers index.
    return split if isinstance(model, nn.Module) else [group for group in split if group["params"]]


class LARS(torch.optim.Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You et al. 2017), as used by SimCLR and BYOL.

    For each parameter w with gradient g (groups with ``lars_exclude=False``):

    .. math::
        g \leftarrow g + \lambda w, \quad
        r = \eta \frac{\|w\|}{\|g\|}\ \text{(1 when either norm is 0)}, \quad
        v \leftarrow \mu v + r\,g, \quad w \leftarrow w - \text{lr}\,v

    where :math:`\|g\|` is taken after adding weight decay, so the denominator is the
    :math:`\|\nabla\| + \lambda\|w\|` of the paper up to the triangle inequality, exactly as in
    SimCLR's reference ``LARSOptimizer``. Groups with ``lars_exclude=True`` get plain momentum SGD
    (r = 1) and should carry ``weight_decay=0`` (see :func:`parameter_groups`).

    With ``clip=True``, :math:`r \leftarrow \min(r, \text{lr}) / \text{lr}`: a layer's step is
    :math:`\min(\eta\|w\|/\|g\|, \text{lr})\,g`, the trust ratio's step but never more than plain SGD at
    the scheduled lr (lightning-bolts' ``clip_lars_lr``, which solo-learn's CIFAR recipes use with
    :math:`\eta` = 0.02). The relative step of a layer is then :math:`\eta` itself rather than
    :math:`\eta\,\text{lr}`, and the schedule acts through the cap.

    Args:
        trust_coefficient: :math:`\eta` (0.001 in SimCLR and BYOL).
        momentum: :math:`\mu` (0.9).
        clip: cap the adapted step at plain SGD's (off in SimCLR and BYOL).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, clip: bool = False) -> None:
        if lr < 0:
            raise ValueError(f"LARS: learning rate must be >= 0, got {lr}")
        if not trust_coefficient > 0:
            raise ValueError(f"LARS: trust coefficient must be > 0, got {trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, clip=clip, lars_exclude=False)
        super().__init__(params, defaults)
        self._scratch: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self.state[p] for p in params]
            adapt = not group["lars_exclude"]
            # Fresh parameter-sized tensors on every step cost more than the arithmetic (the memory is
            # returned to the OS and faulted in again), so the update d = g + wd w is written into a
            # scratch buffer kept between steps (outside the state: checkpoints do not carry it).
            if group["weight_decay"] != 0 or adapt:
                updates = []
                for grad, param in zip(grads, params, strict=True):
                    update = self._scratch.get(param)
                    if update is None or update.shape != param.shape:
                        update = self._scratch[param] = torch.empty_like(param)
                    updates.append(torch.add(grad, param, alpha=group["weight_decay"], out=update))
            else:
                updates = grads
            if adapt:
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                adapted = (param_norms > 0) & (update_norms > 0)
                ratios = torch.where(adapted, group["trust_coefficient"] * param_norms / update_norms,
                                     torch.ones_like(param_norms))
                if group.get("clip", False) and group["lr"] > 0:  # .get: state dicts from before the option
                    ratios = torch.where(adapted, ratios.clamp(max=group["lr"]) / group["lr"], ratios)
                torch._foreach_mul_(updates, ratios.unbind())
            continuing = [i for i, state in enumerate(states) if "momentum_buffer" in state]
            if continuing:
                buffers = [states[i]["momentum_buffer"] for i in continuing]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, [updates[i] for i in continuing])
            for state, update in zip(states, updates, strict=True):
                if "momentum_buffer" not in state:  # first step: the buffer starts as the update
                    state["momentum_buffer"] = update.clone()
            torch._foreach_add_(params, [state["momentum_buffer"] for state in states], alpha=-group["lr"])
        return loss


def build_optimizer(name: OptimizerName, model: nn.Module | list[dict], lr: float, weight_decay: float,
                    momentum: float = 0.9, lars_trust_coefficient: float = 0.001,
                    lars_clip: bool = False) -> torch.optim.Optimizer:
    """LARS, SGD (momentum, Nesterov off) or AdamW over :func:`parameter_groups` of ``model``: a module, or a
    method's own groups (``method.learnable_parameters()``, e.g. BYOL's predictor at a multiple of the rate).

    ``lars_trust_coefficient`` and ``lars_clip``: :class:`LARS`'s ``trust_coefficient`` and ``clip``. Under
    ``lars_clip`` the learning rate is only the cap of a layer's step, so a group's multiplier lifts the cap.
    """
    groups = parameter_groups(model, weight_decay, lr=lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coefficient=lars_trust_coefficient, clip=lars_clip)
    for group in groups:
        group.pop("lars_exclude")
    # foreach: torch takes the per-tensor loop on CPU unless asked; the grouped kernels compute the same values
    # (bitwise, checked in tests/test_optim.py) and are faster (benchmarks/optimizer_step.py).
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of lars, sgd, adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay (:func:`selfsup.schedules.warmup_cosine`) of every group's rate, except
    the groups marked ``scheduled: False``, which keep their peak rate (SimSiam's predictor)."""
    def schedule(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps)

    def constant(step: int) -> float:
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [schedule if group.get("scheduled", True) else constant for group in optimizer.param_groups])
