"""SimSiam, MoCo v2, MoCo v3, Barlow Twins, VICReg and DINO on the method contract: a smoke run of each through
``pretrain``, their rules (the queue, the momentum encoders, the fixed predictor rate, the bias rate), exact
resume, and one spawn of two gloo processes against one process on the global batch (float64)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import typing
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from conftest import pretrain_config
from torch import nn

from selfsup import pipeline
from selfsup.checkpoints import list_checkpoints, load_checkpoint
from selfsup.losses import InfoNCELoss, NegativeCosineLoss
from selfsup.methods import METHODS, BarlowTwins, Method, MoCoV2, MoCoV3, SimSiam, cosine_momentum
from selfsup.models import ResNetBackbone
from selfsup.schedules import warmup_cosine
from selfsup.train import loop
from selfsup.train.optim import build_optimizer, build_scheduler
from selfsup.train.step import TrainingStep

FAMILY = ["simsiam", "moco-v2", "moco-v3", "barlow-twins", "vicreg", "dino"]
TINY = dict(projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32, queue_size=64, head_hidden_dim=32,
            bottleneck_dim=16, output_dim=32, local_views=2)
BATCH = 8


def _quiet(*_) -> None:
    pass


@pytest.fixture(scope="module")
def digits128(tmp_path_factory) -> str:
    """128 real digits as an array file: 4 steps an epoch at batch 32."""
    import numpy as np

    from selfsup.data.datasets import load_digits_data

    data = load_digits_data("train")
    path = tmp_path_factory.mktemp("data") / "digits128.npz"
    np.savez(path, images=data.images[:128].numpy(), labels=data.labels[:128].numpy())
    return str(path)


def _config(out: Path, method: str, data: str, **overrides):
    values = dict(method=method, data=data, out=str(out), image_size=16, width=0.125, **TINY, batch_size=32,
                  epochs=2, warmup_epochs=0.5, eval_at_end=False, report=False, progress=False, log_every=1,
                  num_workers=0, checkpoint_every_steps=3, keep_checkpoints=10)
    values.update(overrides)
    return pretrain_config(**values)


def _backbone() -> ResNetBackbone:
    return ResNetBackbone("resnet18", cifar_stem=True, width=0.125)


def _views(seed: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    view1, view2 = torch.randn(2, batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return view1, view2


def _training_step(method, lr: float = 0.1, total_steps: int = 10, **kwargs) -> TrainingStep:
    optimizer = build_optimizer("sgd", method.learnable_parameters(), lr, 1e-4)
    return TrainingStep(method, optimizer, build_scheduler(optimizer, total_steps, 0), total_steps, total_steps,
                        **kwargs)


def _assert_ema(target: nn.Module, target_before: dict, online: nn.Module, momentum: float) -> None:
    """Every parameter of the target: momentum * before + (1 - momentum) * online, to float32 rounding. (BatchNorm
    statistics follow too, but the step's own forward pass moves them first.)"""
    online_state = dict(online.named_parameters())
    for name, new in target.named_parameters():
        expected = momentum * target_before[name].double() + (1 - momentum) * online_state[name].double()
        assert torch.allclose(new.double(), expected, rtol=1e-6, atol=1e-7), name


def test_options_shared_by_several_methods_have_one_type():
    types: dict[str, set] = {}
    for method in METHODS.values():
        for name, annotation in typing.get_type_hints(method.Settings).items():
            types.setdefault(name, set()).add(annotation)
    assert {name: found for name, found in types.items() if len(found) > 1} == {}
    for name in FAMILY:  # every option documented: its comment is the flag's help line
        from selfsup.settings import field_help

        helps = field_help(METHODS[name].Settings)
        assert all(helps.get(f.name) for f in dataclasses.fields(METHODS[name].Settings)), name


@pytest.mark.parametrize("method", FAMILY)
def test_three_steps_through_pretrain(method, digits128, tmp_path):
    run = pipeline.pretrain(_config(tmp_path / method, method, digits128, max_steps=3), log=_quiet)
    assert run.steps == 3
    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    state = load_checkpoint(run.checkpoint)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    has_target = METHODS[method].momentum_at is not Method.momentum_at
    assert all(("momentum" in row) == has_target for row in rows if "loss" in row)


def test_simsiam_loss_is_the_symmetric_negative_cosine_with_stop_gradient():
    torch.manual_seed(0)
    model = SimSiam(_backbone(), **{k: TINY[k] for k in ("projection_hidden_dim", "projection_dim")},
                    prediction_hidden_dim=8)
    view1, view2 = _views(1)
    output = model(view1, view2)
    z1, z2 = model.projector(model.backbone(view1)), model.projector(model.backbone(view2))
    p1, p2 = model.predictor(z1), model.predictor(z2)
    expected = (NegativeCosineLoss()(p1, z2.detach()) + NegativeCosineLoss()(p2, z1.detach())) / 2
    torch.testing.assert_close(output.loss, expected)
    # The same value without the stop-gradient would give other gradients: compare them.
    parameters = list(model.backbone.parameters())
    for got, want in zip(torch.autograd.grad(output.loss, parameters), torch.autograd.grad(expected, parameters)):
        torch.testing.assert_close(got, want)
    last = model.projector[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine, "the projector's output BN has no scale and shift"


def test_simsiam_predictor_stays_at_the_peak_rate_while_the_rest_follows_the_schedule():
    model = SimSiam(_backbone(), projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=8)
    optimizer = build_optimizer("sgd", model.learnable_parameters(), lr=0.5, weight_decay=1e-4)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=4)
    predictor = {id(p) for p in model.predictor.parameters()}
    for step in range(20):
        for group in optimizer.param_groups:
            if {id(p) for p in group["params"]} <= predictor:
                assert group["lr"] == 0.5
            else:
                assert group["lr"] == pytest.approx(0.5 * warmup_cosine(step, 20, 4))
        optimizer.step()
        scheduler.step()
    grouped = sum(len(g["params"]) for g in optimizer.param_groups)
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)
    unscheduled = SimSiam(_backbone(), projection_hidden_dim=32, projection_dim=16, fixed_predictor_lr=False)
    assert len(unscheduled.learnable_parameters()) == 1


def _moco_v2(queue_size: int = 48) -> MoCoV2:
    torch.manual_seed(0)
    return MoCoV2(_backbone(), projection_hidden_dim=32, projection_dim=16, queue_size=queue_size,
                  momentum_base=0.9)


def test_moco_v2_enqueues_each_steps_keys_at_the_pointer_and_moves_the_key_encoder():
    model = _moco_v2(queue_size=48)
    step = _training_step(model)
    batch = 32
    for index, positions in enumerate([list(range(0, 32)), list(range(32, 48)) + list(range(0, 16))]):
        view1, view2 = _views(index, batch)
        key_before = {k: v.clone() for k, v in model.key_backbone.named_parameters()}
        projector_before = {k: v.clone() for k, v in model.key_projector.named_parameters()}
        queue_before = model.queue.clone()
        with torch.no_grad():  # the keys as the step will compute them (train-mode BatchNorm: batch statistics)
            keys = F.normalize(copy.deepcopy(model.key_projector)(copy.deepcopy(model.key_backbone)(view2)), dim=1)
            queries = model.projector(model.backbone(view1))
            expected_loss = InfoNCELoss(0.2)(queries, keys, queue=queue_before)
        result = step((view1, view2), index)
        torch.testing.assert_close(result.output.loss.detach(), expected_loss, msg="the loss uses the queue before")
        assert int(model.queue_pointer) == (index + 1) * batch % 48
        torch.testing.assert_close(model.queue[positions], keys[-len(positions):])
        untouched = [i for i in range(48) if i not in positions]
        assert torch.equal(model.queue[untouched], queue_before[untouched])
        assert result.momentum == 0.9
        _assert_ema(model.key_backbone, key_before, model.backbone, 0.9)
        _assert_ema(model.key_projector, projector_before, model.projector, 0.9)
    model.eval()
    pointer = int(model.queue_pointer)
    model(*_views(5))
    assert int(model.queue_pointer) == pointer, "evaluation does not enqueue"


def test_moco_v2_step_skipped_for_a_nonfinite_loss_leaves_the_queue_as_it_was():
    model = _moco_v2()
    step = _training_step(model, on_nonfinite="skip")
    step(_views(0, 16), 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    view1, view2 = _views(1, 16)
    view1[0, 0, 0, 0] = float("nan")
    result = step((view1, view2), 1)
    assert result.skipped
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # queue, pointer, weights and BatchNorm statistics
    assert int(model.queue_pointer) == 16


def test_moco_v3_loss_momentum_rule_and_heads():
    torch.manual_seed(0)
    model = MoCoV3(_backbone(), projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32,
                   temperature=0.5)
    assert all(isinstance(head[-1], nn.BatchNorm1d) and not head[-1].affine
               for head in (model.projector, model.predictor, model.key_projector))
    view1, view2 = _views(2)
    with torch.no_grad():
        q1, q2 = (model.predictor(model.projector(model.backbone(v))) for v in (view1, view2))
        k1, k2 = (model.key_projector(model.key_backbone(v)) for v in (view1, view2))
        expected = 2 * 0.5 * (InfoNCELoss(0.5)(q1, k2) + InfoNCELoss(0.5)(q2, k1))
    step = _training_step(model, total_steps=10)
    before = {k: v.clone() for k, v in model.key_backbone.named_parameters()}
    result = step((view1, view2), 3)
    torch.testing.assert_close(result.output.loss.detach(), expected)
    assert result.momentum == pytest.approx(cosine_momentum(3, 10, 0.99))
    _assert_ema(model.key_backbone, before, model.backbone, result.momentum)
    assert model.momentum_at(10, 10) == 1.0


def test_barlow_twins_biases_and_batchnorm_train_at_their_own_rate():
    model = BarlowTwins(_backbone(), projection_hidden_dim=32, projection_dim=16)
    optimizer = build_optimizer("lars", model.learnable_parameters(), lr=0.2, weight_decay=1.5e-6)
    for group in optimizer.param_groups:
        one_dimensional = all(p.ndim <= 1 for p in group["params"])
        assert group["lr"] == pytest.approx(0.0048 if one_dimensional else 0.2)
        assert group["weight_decay"] == (0.0 if one_dimensional else 1.5e-6)


@pytest.mark.parametrize("method", ["moco-v2", "simsiam", "dino"])
def test_resume_from_mid_epoch_is_bitwise_exact(method, digits128, tmp_path):
    # 128 images -> 4 steps/epoch at batch 32, 8 steps in all; checkpoints every 3 steps.
    extra = {"queue_size": 80} if method == "moco-v2" else {}  # not a multiple of the batch: the queue wraps
    full = pipeline.pretrain(_config(tmp_path / "full", method, digits128, **extra), log=_quiet)
    pipeline.pretrain(_config(tmp_path / "split", method, digits128, max_steps=7, **extra), log=_quiet)
    mid_epoch = [p for p in list_checkpoints(tmp_path / "split" / "checkpoints") if load_checkpoint(p)["step"] == 6]
    resumed = pipeline.pretrain(_config(tmp_path / "split", method, digits128, **extra), resume=mid_epoch[0],
                                log=_quiet)
    assert full.steps == resumed.steps == 8
    one, again = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert one["model"].keys() == again["model"].keys()
    for key, value in one["model"].items():
        assert torch.equal(value, again["model"][key]), key
    if method == "moco-v2":
        assert int(one["model"]["queue_pointer"]) == 8 * 32 % 80
    for a, b in zip(one["optimizer"]["state"].values(), again["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


# --- Two processes against one ------------------------------------------------------------------------------------

DISTRIBUTED = ["moco-v2", "moco-v3", "barlow-twins", "vicreg", "dino"]
WORLD = 2


def _float64_method(config, backbone: nn.Module) -> nn.Module:
    """The loop's method in float64, views cast on the way in (tests/test_dist.py says why)."""
    method = METHODS[config.method].from_settings(backbone, config.method_args).double()
    method.register_forward_pre_hook(lambda module, views: tuple(view.double() for view in views))
    return method


def _dist_config(out: Path, method: str):
    # SGD at a large rate, no warmup: three steps move the weights far more than the runs may differ.
    base_lr = {"barlow-twins": 0.05, "vicreg": 0.1, "dino": 0.5}.get(method, 2.0)
    return pretrain_config(method=method, data="digits", out=str(out), image_size=16, width=0.125, **TINY,
                           batch_size=32, epochs=1, max_steps=3, warmup_epochs=0.0, optimizer="sgd", base_lr=base_lr,
                           eval_at_end=False, progress=False, report=False, log_every=1, num_workers=0, device="cpu",
                           seed=0, momentum_base=0.9)


def _run_float64(out: Path, method: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "build_method", _float64_method)
        return pipeline.pretrain(_dist_config(out, method), log=_quiet)


def _worker(rank: int, world: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                                  timeout=timedelta(seconds=120))
    results = {method: str(_run_float64(Path(tmp) / f"two_{method}", method).checkpoint or "")
               for method in DISTRIBUTED}
    torch.save(results, Path(tmp) / f"rank{rank}.pt")
    torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("family_dist")
    one = {method: _run_float64(tmp / f"one_{method}", method).checkpoint for method in DISTRIBUTED}
    torch.multiprocessing.spawn(_worker, args=(WORLD, str(tmp)), nprocs=WORLD)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {"one": one, "ranks": ranks}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.mark.parametrize("method", DISTRIBUTED)
def test_three_steps_in_two_processes_equal_one_process_on_the_global_batch(two_processes, method):
    rank0, rank1 = (r[method] for r in two_processes["ranks"])
    assert rank0 and not rank1, "rank 0 writes the checkpoint"
    two, one = load_checkpoint(rank0), load_checkpoint(two_processes["one"][method])
    config = _dist_config(Path("unused"), method)
    torch.manual_seed(config.seed)
    initial_method = loop.build_method(config, loop.build_backbone(config, 16))
    initial = initial_method.state_dict()
    trained = [name for name, p in initial_method.named_parameters() if p.requires_grad]
    moved = _max_difference({k: one["model"][k] for k in trained}, {k: initial[k] for k in trained})
    figures = {"model": _max_difference(two["model"], one["model"]),
               "optimizer_momentum": max(float((a["momentum_buffer"] - b["momentum_buffer"]).abs().max())
                                         for a, b in zip(two["optimizer"]["state"].values(),
                                                         one["optimizer"]["state"].values()))}
    print(f"\n{method}, 3 steps, 2 processes x 16 vs 1 x 32 (float64), max |diff|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()) + f"; the weights moved up to {moved:.2e}")
    assert figures["model"] <= 1e-6 and figures["optimizer_momentum"] <= 1e-6
    assert moved > 1e-3
    if method == "moco-v2":  # the queue holds the keys of both ranks, in the global batch's order
        assert int(two["model"]["queue_pointer"]) == int(one["model"]["queue_pointer"]) == 3 * 32 % 64
        assert float((two["model"]["queue"] - one["model"]["queue"]).abs().max()) <= 1e-6
        assert not torch.equal(two["model"]["queue"], initial["queue"].double())


def test_mocos_name_a_low_temperature_first_for_a_nonfinite_loss():
    from selfsup.train.step import likely_causes

    for cls in (MoCoV2, MoCoV3):
        settings = cls.Settings(**{k: v for k, v in TINY.items() if k in cls.Settings.__dataclass_fields__},
                                temperature=0.01)
        causes = likely_causes(cls.from_settings(_backbone(), settings))
        assert causes.startswith("Likely causes: a temperature this low (temperature 0.01)"), cls
        assert "temperature" not in likely_causes(cls.from_settings(_backbone(), dataclasses.replace(settings, temperature=0.2))).split(",")[0]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_head_size_below_one_is_refused_naming_the_setting(method):
    from selfsup.methods.base import check_sizes

    settings = METHODS[method].Settings()
    size = next(f.name for f in dataclasses.fields(settings) if f.name.endswith("_dim"))
    with pytest.raises(ValueError, match=f"setting '{size}' must be >= 1, got 0"):
        dataclasses.replace(settings, **{size: 0})
    check_sizes(settings, size)  # the defaults pass
