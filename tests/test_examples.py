"""The scripts of examples/ (docs/python_api.md) run as a user runs them, on tiny budgets, and do what they say."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import selfsup

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_byol_own_loop(tmp_path):
    out = tmp_path / "byol"
    run_example("byol_own_loop.py", "--steps", "6", "--batch-size", "32", "--width", "0.125", "--out", str(out))
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 6 and len(result["losses"]) == 6
    assert result["finite"] and all(math.isfinite(loss) for loss in result["losses"])
    assert result["online_backbone_change"] > 0  # the optimizer moved the online network
    # The EMA moved the target too, far less (momentum >= 0.996).
    assert 0 < result["target_backbone_change"] < result["online_backbone_change"]
    backbone = selfsup.load_backbone(out / "backbone.pt")
    assert backbone.feature_dim == 64


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    stdout = run_example("pretrain_from_python.py", "--steps", "3", "--batch-size", "32", "--width", "0.125",
                         "--out", str(out))
    assert "trained 3 steps" in stdout
    return out


def test_pretrain_from_python(pretrained_run):
    assert (pretrained_run / "backbone.pt").is_file()
    assert len(list((pretrained_run / "checkpoints").glob("step_*.pt"))) == 1
    backbone = selfsup.load_backbone(pretrained_run / "backbone.pt")
    assert isinstance(backbone, selfsup.ResNetBackbone) and backbone.width == 0.125
    table = json.loads((pretrained_run / "eval.json").read_text())
    assert 0 <= table["knn_top1"] <= 100 and 0 <= table["linear_top1"] <= 100


def test_load_backbone_example(pretrained_run, tmp_path):
    out = tmp_path / "downstream"
    run_example("load_backbone.py", "--checkpoint", str(pretrained_run / "backbone.pt"), "--head-steps", "20",
                "--linear-max-iter", "5", "--out", str(out))
    result = json.loads((out / "result.json").read_text())
    assert result["feature_dim"] == 64
    for key in ("head_top1", "knn_top1", "linear_top1"):
        assert 0 <= result[key] <= 100, key
