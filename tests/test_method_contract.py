"""The method contract is complete: a method defined here, in the test file, added to METHODS the way a user
would, runs through ``selfsup pretrain`` (its own flags, checkpoints, exact mid-epoch resume, the final table)
without any change to the package; and a wrong method or option fails at once with one line."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from selfsup.checkpoints import list_checkpoints, load_checkpoint
from selfsup.cli import main
from selfsup.losses import NTXentLoss
from selfsup.methods import METHODS, Method, MethodOutput
from selfsup.methods.momentum import ema_update_, frozen_copy
from selfsup.models.heads import mlp
from selfsup.transforms.views import ViewConfig


@dataclass(frozen=True)
class TinySettings:
    # Output size of the projection.
    projection_dim: int = 16
    # The head's learning rate over the backbone's.
    head_lr_multiplier: float = 3.0
    # NT-Xent temperature.
    temperature: float = 0.5


class TinyContrast(Method):
    """SimCLR-like, with the hooks a richer method needs: a head at its own learning rate, a target projector
    that follows by a constant-momentum EMA, a buffer counting the steps, and an unscheduled group."""

    Settings = TinySettings
    optimizer_defaults = {"lars": (0.5, 1e-6), "sgd": (0.1, 5e-4), "adamw": (1e-3, 1e-6)}
    paper_optimizer = "lars"

    def __init__(self, backbone: nn.Module, settings: TinySettings) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = mlp([backbone.feature_dim, 32, settings.projection_dim])
        self.scale = nn.Parameter(torch.ones(()))  # a parameter kept at its peak learning rate
        self.target_head = frozen_copy(self.head)
        self.criterion = NTXentLoss(settings.temperature, gather_distributed=False)
        self.head_lr_multiplier = settings.head_lr_multiplier
        self.register_buffer("forward_calls", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_settings(cls, backbone, settings):
        return cls(backbone, settings)

    @classmethod
    def view_recipes(cls, settings, crop_size, mean, std, blur):
        view = ViewConfig(crop_size=crop_size, mean=tuple(mean), std=tuple(std), blur_probability=0.0)
        return view, view

    def forward(self, view1, view2):
        self.forward_calls += 1
        features = self.backbone(torch.cat([view1, view2]))
        z = self.head(features) * self.scale
        with torch.no_grad():
            target = self.target_head(features)
        z1, z2 = z.chunk(2)
        loss = self.criterion(z1, z2) + 0.1 * (z - target).pow(2).mean()
        return MethodOutput(loss=loss, features=features[: len(view1)].detach(), embeddings=(z1.detach(), z2.detach()))

    def learnable_parameters(self):
        head = list(self.head.parameters())
        rest = [p for name, p in self.backbone.named_parameters()]
        return [{"params": rest}, {"params": head, "lr_multiplier": self.head_lr_multiplier},
                {"params": [self.scale], "scheduled": False}]

    def momentum_at(self, step, total_steps):
        return 0.9

    @torch.no_grad()
    def update_target(self, momentum):
        ema_update_(self.target_head, self.head, momentum)


@pytest.fixture
def tiny_method(monkeypatch):
    monkeypatch.setitem(METHODS, "tiny-contrast", TinyContrast)


def _args(out, *extra):
    return ["pretrain", "--method", "tiny-contrast", "--data", "digits", "--out", str(out), "--image-size", "16",
            "--width", "0.125", "--batch-size", "64", "--epochs", "2", "--warmup-epochs", "0.5",
            "--checkpoint-every-steps", "5", "--keep-checkpoints", "20", "--log-every", "2", "--no-progress",
            "--num-workers", "0", "--linear-max-iter", "5", "--no-report", "--projection-dim", "8",
            "--head-lr-multiplier", "2.0", *extra]


def test_a_method_from_a_test_file_runs_through_pretrain_and_resumes_exactly(tiny_method, tmp_path, capsys):
    # digits: 1347 training images -> 21 steps per epoch at batch 64, 42 in all
    assert main(_args(tmp_path / "full")) == 0
    printed = capsys.readouterr().out
    assert "kNN" in printed and "random init" in printed and "raw pixels" in printed
    table = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert 0 <= table["knn_top1"] <= 100

    full = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    assert full["step"] == 42 and full["config"]["method_args"] == {"projection_dim": 8, "head_lr_multiplier": 2.0,
                                                                    "temperature": 0.5}
    assert int(full["model"]["forward_calls"]) == 42, "the method's buffers travel in the checkpoint"
    groups = full["optimizer"]["param_groups"]
    peak = 0.5 * 64 / 256
    assert sorted({round(g["initial_lr"], 9) for g in groups}) == sorted({peak, 2.0 * peak})
    scheduled = [g for g in groups if not g.get("scheduled", True)]
    assert scheduled and all(g["lr"] == pytest.approx(peak) for g in scheduled), "an unscheduled group keeps its rate"
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["momentum"] == 0.9 for row in rows if "loss" in row)

    assert main(_args(tmp_path / "split", "--max-steps", "23")) == 0
    mid_epoch = [p for p in list_checkpoints(tmp_path / "split" / "checkpoints") if load_checkpoint(p)["step"] == 20]
    assert main(_args(tmp_path / "split", "--resume", str(mid_epoch[0]))) == 0
    again = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert again["step"] == 42
    for key, value in full["model"].items():
        assert torch.equal(value, again["model"][key]), key


def test_the_method_gets_its_own_flags_with_help(tiny_method, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--head-lr-multiplier" in text and "The head's learning rate over the backbone's." in text
    assert "tiny-contrast" in text


def test_an_option_of_another_method_fails_before_any_work(tiny_method, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out, "--prediction-hidden-dim", "64")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "'prediction_hidden_dim'" in error and "'tiny-contrast'" in error
    assert not out.exists()
    assert main(["pretrain", "--method", "byol", "--temperature", "0.2", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'temperature'" in error and "'byol'" in error


def test_an_unknown_method_fails_with_the_known_ones(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: moco-v9\n")
    assert main(["pretrain", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    known = ", ".join(sorted(METHODS))
    assert len(error.splitlines()) == 1 and "'moco-v9'" in error and f"known methods: {known}" in error
    assert not (tmp_path / "run").exists()
    from selfsup.config import PretrainConfig

    with pytest.raises(ValueError, match=f"unknown method 'moco-v9'; known methods: {known}"):
        PretrainConfig(method="moco-v9")
