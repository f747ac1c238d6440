"""Two CPU processes (gloo) against one process on the same global batch.

One spawn of two processes runs every distributed case (:func:`_worker`) and saves what each rank
computed; the tests compare that with the same code run here in one process on the whole global batch:
NT-Xent with negatives from both ranks, BYOL with synchronised BatchNorm under DDP, three steps of
``pretrain`` for BYOL and SimCLR, and resuming across process counts. Figures print with ``pytest -s``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from conftest import pretrain_config
from torch import nn

from selfsup import dist, pipeline
from selfsup.checkpoints import list_checkpoints, load_checkpoint
from selfsup.config import PretrainConfig
from selfsup.losses import NTXentLoss
from selfsup.methods import BYOL
from selfsup.models import ResNetBackbone
from selfsup.train import loop
from selfsup.train.build import build_backbone, build_method

WORLD = 2
GLOBAL_BATCH = 8  # for the loss cases; 4 rows per rank
FEATURE_DIM = 6


def _rows(rank: int, world: int) -> slice:
    local = GLOBAL_BATCH // world
    return slice(rank * local, (rank + 1) * local)


def _ntxent_case(rank: int, world: int, gather: bool) -> dict:
    """NT-Xent of (x1 W, x2 W) on this rank's rows, float64, with DDP-style averaged gradients."""
    generator = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, GLOBAL_BATCH, FEATURE_DIM, generator=generator, dtype=torch.float64)
    weight = torch.randn(FEATURE_DIM, FEATURE_DIM, generator=generator, dtype=torch.float64).requires_grad_()
    x1 = x1[_rows(rank, world)].clone().requires_grad_()
    x2 = x2[_rows(rank, world)].clone().requires_grad_()
    loss = NTXentLoss(temperature=0.5, gather_distributed=gather)(x1 @ weight, x2 @ weight)
    loss.backward()
    # DDP's rule: every gradient is averaged over ranks (the gather's backward already summed them).
    return {"loss": dist.all_reduce_mean(loss.detach()), "weight_grad": dist.all_reduce_mean(weight.grad),
            "x1_grad": dist.gather_no_grad(x1.grad) / world, "x2_grad": dist.gather_no_grad(x2.grad) / world}


def _tiny_byol() -> BYOL:
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    return BYOL(backbone, projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32).double()


def _byol_case(rank: int, world: int) -> dict:
    """One float64 BYOL step on this rank's rows: synchronised BatchNorm and DDP when world > 1."""
    method = _tiny_byol()
    model: nn.Module = method
    if world > 1:
        method = dist.convert_sync_batchnorm(method, torch.device("cpu"))
        model = nn.parallel.DistributedDataParallel(method)
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(2, GLOBAL_BATCH, 3, 16, 16, generator=generator, dtype=torch.float64)
    output = model(views[0, _rows(rank, world)], views[1, _rows(rank, world)])
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    buffers = {name: b.clone() for name, b in method.named_buffers()}
    torch.optim.SGD(method.parameters(), lr=0.5).step()
    method.update_target(0.9)  # on the unwrapped module, as the training loop does
    return {"loss": dist.all_reduce_mean(output.loss.detach()), "grads": grads, "buffers": buffers,
            "state_after_step": {k: v.clone() for k, v in method.state_dict().items()}}


def _float64_method(config: PretrainConfig, backbone: nn.Module) -> nn.Module:
    """The loop's method in float64, views cast on the way in.

    Why: in float32 this tiny model amplifies rounding differences fast (~1e-6 after one step, ~1e-2
    after three), and one process with 1 or 2 threads differs as much as 1 or 2 processes. In float64
    the same amplification stays far below what the comparison must detect.
    """
    method = build_method(config, backbone).double()
    method.register_forward_pre_hook(lambda module, views: tuple(view.double() for view in views))
    return method


def _pretrain_float64(config: PretrainConfig, resume: str | Path | None = None):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "build_method", _float64_method)
        return pipeline.pretrain(config, resume=resume, log=_quiet)


def _train_config(out: Path, method: str, **overrides) -> PretrainConfig:
    # SGD with a large learning rate and no warmup, so that three steps move the weights far more
    # than the differences between the two runs.
    values = dict(method=method, data="digits", out=str(out), image_size=16, width=0.125,
                  projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32, batch_size=32,
                  epochs=1, max_steps=3, warmup_epochs=0.0, optimizer="sgd", base_lr=2.0, eval_at_end=False,
                  progress=False, report=False, log_every=1, num_workers=0, device="cpu", seed=0)
    values.update(overrides)
    return pretrain_config(**values)


def _quiet(*_) -> None:
    pass


def _worker(rank: int, world: int, tmp: str, resume_from: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    # A file rendezvous: no port to pick. pretrain's init_from_environment finds the group initialised.
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                                  timeout=timedelta(seconds=120))
    results = {"ntxent": _ntxent_case(rank, world, gather=True),
               "ntxent_local": _ntxent_case(rank, world, gather=False),
               "byol": _byol_case(rank, world)}
    for method in ("byol", "simclr"):
        run = _pretrain_float64(_train_config(Path(tmp) / f"two_{method}", method))
        results[f"train_{method}"] = {"backbone": run.backbone.state_dict(), "checkpoint": str(run.checkpoint or "")}
    run = _pretrain_float64(_train_config(Path(tmp) / "two_resumed", "byol", max_steps=6), resume=resume_from)
    results["resumed"] = {"backbone": run.backbone.state_dict(), "checkpoint": str(run.checkpoint or ""),
                          "steps": run.steps}
    torch.save(results, Path(tmp) / f"rank{rank}.pt")
    torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The one-process runs here, then the two-process runs in spawned workers."""
    tmp = tmp_path_factory.mktemp("dist")
    one = {method: _pretrain_float64(_train_config(tmp / f"one_{method}", method)) for method in ("byol", "simclr")}
    torch.multiprocessing.spawn(_worker, args=(WORLD, str(tmp), str(one["byol"].checkpoint)), nprocs=WORLD)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {"tmp": tmp, "one": one, "ranks": ranks}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def test_ntxent_two_processes_equal_one_process_on_the_global_batch(runs):
    single = _ntxent_case(0, 1, gather=True)
    for rank_results in runs["ranks"]:
        two = rank_results["ntxent"]
        figures = {k: float((two[k] - single[k]).abs().max()) for k in single}
        print(f"\nNT-Xent, 2 processes x {GLOBAL_BATCH // WORLD} vs 1 x {GLOBAL_BATCH} (float64), max |diff|: "
              + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))
        assert figures["loss"] <= 1e-6
        for name in ("weight_grad", "x1_grad", "x2_grad"):
            torch.testing.assert_close(two[name], single[name], rtol=1e-9, atol=1e-12)
    # Sanity: negatives from this rank only give another loss.
    local = runs["ranks"][0]["ntxent_local"]["loss"]
    assert abs(float(local - single["loss"])) > 1e-3


def test_byol_with_syncbatchnorm_two_processes_equal_one_process(runs):
    single = _byol_case(0, 1)
    rank0, rank1 = (r["byol"] for r in runs["ranks"])
    online = {name for name, p in _tiny_byol().named_parameters() if p.requires_grad}
    assert set(rank0["grads"]) == online, "target parameters get no gradient, every online one does"
    figures = {"loss": abs(float(rank0["loss"] - single["loss"])),
               "grads": _max_difference(rank0["grads"], single["grads"]),
               "bn_buffers": _max_difference(rank0["buffers"], single["buffers"]),
               "state_after_step": _max_difference(rank0["state_after_step"], single["state_after_step"])}
    print("\nBYOL + SyncBN, 2 processes vs 1 (float64), max |diff|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))
    assert figures["loss"] <= 1e-10
    assert figures["grads"] <= 1e-9 and figures["bn_buffers"] <= 1e-10 and figures["state_after_step"] <= 1e-9
    # DDP averaged identical gradients on both ranks; the EMA target stayed identical.
    assert _max_difference(rank0["grads"], rank1["grads"]) == 0.0
    assert _max_difference(rank0["state_after_step"], rank1["state_after_step"]) == 0.0


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_three_steps_in_two_processes_equal_one_process(runs, method):
    rank0, rank1 = (r[f"train_{method}"] for r in runs["ranks"])
    assert _max_difference(rank0["backbone"], rank1["backbone"]) == 0.0, "ranks ended with different weights"
    two = load_checkpoint(rank0["checkpoint"])
    one = load_checkpoint(runs["one"][method].checkpoint)
    config = _train_config(runs["tmp"], method)
    torch.manual_seed(config.seed)  # the loop's initial weights
    initial_method = build_method(config, build_backbone(config, config.image_size))
    initial = initial_method.state_dict()
    parameters = {name for name, _ in initial_method.named_parameters()}
    moved = _max_difference({k: v for k, v in one["model"].items() if k in parameters},
                            {k: v for k, v in initial.items() if k in parameters})
    figures = {"model": _max_difference(two["model"], one["model"]),
               "optimizer_momentum": max(float((a["momentum_buffer"] - b["momentum_buffer"]).abs().max())
                                         for a, b in zip(two["optimizer"]["state"].values(),
                                                         one["optimizer"]["state"].values())),
               "probe": _max_difference(two["probe"], one["probe"])}
    print(f"\n{method}, 3 steps of pretrain, 2 processes x 16 vs 1 x 32 (float64 model), max |diff|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in figures.items())
          + f"; the weights moved up to {moved:.2e} from their initial values")
    assert figures["model"] <= 1e-9 and figures["optimizer_momentum"] <= 1e-9
    assert figures["probe"] <= 1e-5  # the online probe stays float32
    assert moved > 1e-2


def test_checkpoint_written_once_by_rank_0_and_resumed_across_process_counts(runs, tmp_path):
    tmp, ranks = runs["tmp"], runs["ranks"]
    checkpoints = list_checkpoints(tmp / "two_byol" / "checkpoints")
    assert [p.name for p in checkpoints] == ["step_000000003.pt"]
    assert sorted(p.name for p in (tmp / "two_byol" / "checkpoints").iterdir()) == ["step_000000003.pt"]
    assert ranks[0]["train_byol"]["checkpoint"] == str(checkpoints[0]) and ranks[1]["train_byol"]["checkpoint"] == ""
    rows = [json.loads(line) for line in (tmp / "two_byol" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3], "metrics written by rank 0 only"

    # 2 processes resumed from the 1-process checkpoint of step 3; here 1 process from the 2-process one.
    assert [r["resumed"]["steps"] for r in ranks] == [6, 6]
    assert _max_difference(ranks[0]["resumed"]["backbone"], ranks[1]["resumed"]["backbone"]) == 0.0
    one = _pretrain_float64(_train_config(tmp_path / "one_resumed", "byol", max_steps=6), resume=checkpoints[0])
    two_from_one = load_checkpoint(ranks[0]["resumed"]["checkpoint"])
    one_from_two = load_checkpoint(one.checkpoint)
    difference = _max_difference(two_from_one["model"], one_from_two["model"])
    print(f"\nresumed to step 6: 2 processes from a 1-process checkpoint vs 1 from a 2-process one, "
          f"max |diff| {difference:.2e}")
    assert two_from_one["step"] == one_from_two["step"] == 6
    assert difference <= 1e-9


def test_every_process_draws_its_rows_of_the_global_batch_views():
    from selfsup.data.datasets import load_image_data
    from selfsup.data.loading import InMemoryViewBatches, PerImageViews
    from selfsup.methods.byol import byol_views
    from selfsup.transforms.batched import BatchedViews, BatchedViewAugment
    from selfsup.transforms.views import MultiViewTransform, view_transform

    data = load_image_data("digits", "train")
    cpu = torch.device("cpu")
    for two_views in (BatchedViews(*map(BatchedViewAugment, byol_views(16))),
                      PerImageViews(MultiViewTransform(*map(view_transform, byol_views(16))))):
        one = next(InMemoryViewBatches(data, two_views, 8, 3, cpu).epoch(1))
        two = [next(InMemoryViewBatches(data, two_views, 8, 3, cpu, rank, 2).epoch(1)) for rank in range(2)]
        for index in range(3):  # view1, view2, labels
            assert torch.equal(one[index], torch.cat([two[0][index], two[1][index]]))


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 5),
                              nn.BatchNorm1d(5))
    converted = dist.convert_sync_batchnorm(copy.deepcopy(reference), torch.device("cpu"))
    assert sum(isinstance(m, dist.CPUSyncBatchNorm) for m in converted.modules()) == 2
    images = torch.randn(6, 3, 8, 8)
    torch.testing.assert_close(converted(images), reference(images))
    assert converted.state_dict().keys() == reference.state_dict().keys()


def test_dist_helpers_without_a_process_group():
    values = torch.arange(6.0).view(3, 2)
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main_process() and not dist.is_distributed()
    assert dist.gather_with_grad(values) is values and dist.gather_no_grad(values) is values
    assert dist.any_rank(True) and not dist.any_rank(False)
    assert dist.broadcast_object({"a": 1}) == {"a": 1}


def test_launch_local_refuses_a_single_process():
    from selfsup.train.launch import launch_local

    with pytest.raises(ValueError, match="devices"):
        launch_local(1, ["pretrain"])


@pytest.mark.slow
def test_selfsup_pretrain_in_two_processes_through_torchrun(tmp_path):
    from selfsup.train.launch import launch_local

    out = tmp_path / "run"
    code = launch_local(2, ["pretrain", "--devices", "2", "--device", "cpu", "--data", "digits", "--out", str(out),
                            "--image-size", "16", "--width", "0.125", "--projection-hidden-dim", "32",
                            "--projection-dim", "16", "--prediction-hidden-dim", "32", "--batch-size", "32",
                            "--max-steps", "2", "--checkpoint-every-steps", "1", "--log-every", "1",
                            "--no-progress", "--no-eval-at-end", "--no-report", "--num-workers", "0", "--method",
                            "byol"])
    assert code == 0
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_000000001.pt", "step_000000002.pt"]
    state = load_checkpoint(out / "checkpoints" / "step_000000002.pt")
    assert state["step"] == 2 and state["config"]["devices"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    assert (out / "backbone.pt").is_file()
