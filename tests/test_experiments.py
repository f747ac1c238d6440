"""The experiment commands end to end on a tiny subset, and the measures they report against naive
references."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.experiments.byol_ablation import collapse_verdict
from selfsup.experiments.common import ExperimentSettings, default_data_specs
from selfsup.experiments.temperature import hardest_negative_shares, negative_weights

TINY = ["--data", "digits", "--subset", "96", "--test-subset", "60", "--image-size", "8", "--epochs", "1",
        "--batch-size", "32", "--width", "0.125", "--projection-hidden-dim", "16", "--projection-dim", "8",
        "--knn-k", "10", "--analysis-pairs", "32", "--log-every", "1", "--threads", "1", "--num-workers", "0"]


def _naive_negative_weights(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> list[list[float]]:
    """Loops over anchors and negatives, in float64 with math.exp."""
    views = [F.normalize(v.double(), dim=0) for v in torch.cat([z1, z2])]
    n = z1.shape[0]
    weights = []
    for i, anchor in enumerate(views):
        positive = (i + n) % (2 * n)
        terms = [math.exp(float(anchor @ other) / temperature) for k, other in enumerate(views)
                 if k not in (i, positive)]
        weights.append(sorted((t / sum(terms) for t in terms), reverse=True))
    return weights


@pytest.mark.parametrize("temperature", [0.05, 0.5, 2.0])
def test_negative_weights_match_a_loop_over_anchors(temperature):
    z1, z2 = torch.randn(5, 7, generator=torch.Generator().manual_seed(1)), torch.randn(5, 7)
    expected = torch.tensor(_naive_negative_weights(z1, z2, temperature), dtype=torch.float64)
    torch.testing.assert_close(negative_weights(z1, z2, temperature), expected)


def test_negative_weights_are_the_softmax_coefficients_of_the_ntxent_gradient():
    # d loss_i / d u_i = (1/t) (sum_k p_ik u_k - u_j): the gradient of the loss of anchor 0 with respect to its
    # normalized view, minus the positive's pull, is the p-weighted sum of the other views.
    from selfsup.losses import NTXentLoss

    temperature, n = 0.3, 4
    u = F.normalize(torch.randn(2 * n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), dim=1)
    anchor = u[0].clone().requires_grad_(True)
    logits = torch.stack([anchor @ u[k] for k in range(1, 2 * n)]) / temperature
    loss = -logits[n - 1] + torch.logsumexp(logits, dim=0)  # u[n] is anchor 0's positive
    (gradient,) = torch.autograd.grad(loss, anchor)
    p = logits.detach().softmax(0)
    negatives = [k for k in range(1, 2 * n) if k != n]
    share = p[[k - 1 for k in negatives]] / p[[k - 1 for k in negatives]].sum()
    expected = sorted(share.tolist(), reverse=True)
    torch.testing.assert_close(negative_weights(u[:n], u[n:], temperature)[0], torch.tensor(expected,
                                                                                            dtype=torch.float64))
    torch.testing.assert_close(gradient, (p @ u[1:] - u[n]) / temperature)
    assert NTXentLoss(temperature)(u[:n], u[n:]).isfinite()


def test_hardest_negative_shares_limits():
    z1, z2 = torch.randn(50, 16, generator=torch.Generator().manual_seed(3)), torch.randn(50, 16)
    hot = hardest_negative_shares(z1, z2, 1e3)  # nearly uniform weights
    assert hot["negatives_per_anchor"] == 98
    assert hot["top10_share"] == pytest.approx(10 / 98, rel=1e-2)
    assert hot["top1pct_share"] == pytest.approx(1 / 98, rel=1e-2)
    assert hot["effective_negatives"] == pytest.approx(98, rel=1e-3)
    cold = hardest_negative_shares(z1, z2, 1e-4)  # the hardest negative takes (nearly) everything
    assert cold["top1pct_share"] == pytest.approx(1.0, abs=0.02)  # near-ties share it
    assert cold["effective_negatives"] < 1.1
    middle = hardest_negative_shares(z1, z2, 0.1)
    assert cold["top10_share"] > middle["top10_share"] > hot["top10_share"]


def test_collapse_verdicts():
    dim = 64
    assert collapse_verdict({"normalized_std": 0.9 / 8, "rankme": 40.0}, dim) == "no collapse"
    assert collapse_verdict({"normalized_std": 0.01 / 8, "rankme": 1.0}, dim) == "complete collapse"
    assert collapse_verdict({"normalized_std": 0.5 / 8, "rankme": 1.2}, dim) == "dimensional collapse"


def test_settings_are_checked_and_a_foreign_data_set_needs_test_data():
    with pytest.raises(ValueError, match="'subset'"):
        ExperimentSettings(subset=1)
    with pytest.raises(ValueError, match="'test_data'"):
        default_data_specs(ExperimentSettings(pretrain=PretrainConfig(data="/some/folder")))
    assert default_data_specs(ExperimentSettings(pretrain=PretrainConfig(data="digits"))) == ("digits", "digits")


def test_temperature_experiment_end_to_end(tmp_path, capsys):
    out = tmp_path / "temperature"
    assert main(["experiment", "temperature", *TINY, "--temperatures", "0.1", "0.5", "1.0", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["temperature"] for run in results["runs"]] == [0.1, 0.5, 1.0]
    assert 0 <= results["initial_knn_top1"] <= 100
    for run in results["runs"]:
        assert 0 <= run["final_knn_top1"] <= 100
        assert 0 < run["top1pct_share"] <= 1 and run["negatives_per_anchor"] == 62  # 32 pairs
    assert results["best_temperature"] in (0.1, 0.5, 1.0)
    assert results["best_inside_range"] == (results["best_temperature"] == 0.5)
    report = (out / "report.md").read_text()
    for figure in ("knn_vs_temperature.png", "cosine_histograms.png", "hard_negatives.png", "accuracy.png",
                   "monitors.png", "training_curves.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({figure})" in report
    assert "selfsup experiment temperature" in results["command"] or results["command"].startswith("selfsup")
    assert "top-10 share" in capsys.readouterr().out


def test_byol_ablation_end_to_end(tmp_path, capsys):
    out = tmp_path / "ablation"
    assert main(["experiment", "byol-ablation", *TINY, "--prediction-hidden-dim", "16", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["variant"] for run in results["runs"]] == ["byol", "no-predictor", "no-ema", "random-target", "simsiam"]
    for run in results["runs"]:
        assert run["verdict"] in ("no collapse", "complete collapse", "dimensional collapse")
        assert run["std_over_isotropic"] == pytest.approx(run["normalized_std"] * math.sqrt(8))
        assert run["knn_change_from_initial"] == pytest.approx(run["final_knn_top1"] - results["initial_knn_top1"])
    rows = json.loads((out / "runs" / "no-ema.json").read_text())
    assert all(row["momentum"] == 0.0 for row in rows if "momentum" in row)
    rows = json.loads((out / "runs" / "random-target.json").read_text())
    assert all(row["momentum"] == 1.0 for row in rows if "momentum" in row)
    rows = json.loads((out / "runs" / "simsiam.json").read_text())  # no target network: no momentum logged
    assert rows and not any("momentum" in row for row in rows) and any("loss" in row for row in rows)
    assert results["runs"][-1]["target"].startswith("none")
    for figure in ("monitors.png", "accuracy.png", "final.png", "training_curves.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict" in capsys.readouterr().out


def test_unknown_variant_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["experiment", "byol-ablation", "--variants", "no-such-thing", "--out", str(tmp_path)])


def test_an_experiment_takes_a_library_backbone_with_its_arguments(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "vit"
    tiny = [arg for arg in TINY if arg not in ("--width", "0.125")]
    assert main(["experiment", "temperature", *tiny, "--temperatures", "0.5", "--backbone", "timm:vit_tiny_patch16_224",
                 "--backbone-args", "img_size=8,patch_size=4,depth=1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 1 and 0 <= results["runs"][0]["final_knn_top1"] <= 100
