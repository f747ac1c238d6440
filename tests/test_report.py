"""The Markdown report: written atomically from synthetic rows, valid PNGs, no figure for absent data."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

import selfsup.files  # noqa: E402
from selfsup.report import _running_mean, plot_monitors, write_pretrain_report  # noqa: E402

ALL_FIGURES = {"training_curves.png", "accuracy.png", "monitors.png", "embedding_map.png"}


def _rows(steps: int = 60, steps_per_epoch: int = 20, monitors: bool = True, knn: bool = True,
          collapsing: bool = False) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        epoch = (step - 1) // steps_per_epoch + 1
        row = {"step": step, "epoch": epoch, "loss": 2.0 * math.exp(-step / 30) + 0.01 * (step % 3),
               "lr": 0.1 * min(1.0, step / 10), "momentum": 0.99 + 0.0001 * step, "images_per_s": 250.0}
        if monitors:
            std = 0.08 * (1 - step / steps) + 0.001 if collapsing else 0.07
            row |= {"normalized_std": std, "rankme": 1.2 if collapsing else 40.0, "alignment": 0.5,
                    "uniformity": -3.0, "positive_cosine": 0.8, "negative_cosine": 0.1}
        rows.append(row)
        if knn and step % steps_per_epoch == 0:
            # a kNN that failed logs None: skipped, not plotted
            rows.append({"step": step, "epoch": epoch, "knn_top1": 30.0 + 5 * epoch,
                         "online_probe_top1": None})
    return rows


def _clusters(points: int = 60, classes: int = 3, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(points) % classes
    return 3 * rng.standard_normal((classes, dim))[labels] + rng.standard_normal((points, dim)), labels


def _assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100


def _referenced_images(markdown: str) -> set[str]:
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown))


def test_full_report_has_every_figure_and_references_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "byol-run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"method": "byol", "epochs": 3}))
    embeddings, labels = _clusters()
    table = {"knn_top1": 61.5, "linear_top1": 64.25, "knn_k": 200,
             "rows": [{"name": "pretrained", "knn_top1": 61.5, "linear_top1": 64.25, "feature_dim": 512},
                      {"name": "random init", "knn_top1": 20.0, "linear_top1": 25.0, "feature_dim": 512}]}
    path = write_pretrain_report(run_dir, _rows(), table, embeddings, labels, embedding_dim=128,
                                 class_names=["cat", "dog", "ship"], map_points=45)
    assert path == run_dir / "report.md"
    markdown = path.read_text(encoding="utf-8")
    assert _referenced_images(markdown) == ALL_FIGURES
    for name in ALL_FIGURES:
        _assert_valid_png(run_dir / name)
    assert "| pretrained | 61.5 | 64.25 | 512 |" in markdown and "knn_k = 200" in markdown
    assert "60 steps, 3 epochs" in markdown and "kNN top-1: 45.00% at the last epoch" in markdown
    assert "no collapse" in markdown and '"method": "byol"' in markdown
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]


def test_no_figure_for_absent_data(tmp_path: Path) -> None:
    path = write_pretrain_report(tmp_path, _rows(monitors=False, knn=False))
    markdown = path.read_text(encoding="utf-8")
    assert _referenced_images(markdown) == {"training_curves.png"}
    assert {p.name for p in tmp_path.glob("*.png")} == {"training_curves.png"}
    assert "Configuration" not in markdown and "Evaluation" not in markdown

    empty = write_pretrain_report(tmp_path / "empty", [])
    assert empty.read_text(encoding="utf-8").startswith("# Pretraining report: empty")
    assert not list((tmp_path / "empty").glob("*.png"))


def test_collapse_is_reported(tmp_path: Path) -> None:
    rows = _rows(collapsing=True, knn=False)
    markdown = write_pretrain_report(tmp_path, rows, embedding_dim=256).read_text(encoding="utf-8")
    assert "**Warning:** the embeddings are collapsing" in markdown


def test_report_without_matplotlib_still_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    markdown = write_pretrain_report(tmp_path, _rows()).read_text(encoding="utf-8")
    assert "matplotlib is not installed" in markdown and not list(tmp_path.glob("*.png"))


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="knn_top1 must be a percentage"):
        write_pretrain_report(tmp_path, [{"step": 1, "epoch": 1, "knn_top1": 250.0}])
    with pytest.raises(ValueError, match="no 'step'"):
        write_pretrain_report(tmp_path, [{"epoch": 1, "loss": 1.0}])
    embeddings, labels = _clusters()
    with pytest.raises(ValueError, match="labels"):
        write_pretrain_report(tmp_path, [], None, embeddings, labels[:-1])


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report")

    def failing_replace(source: str, destination: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(selfsup.files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_pretrain_report(tmp_path, [])
    assert target.read_text() == "old report" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_several_runs_overlay_in_one_figure(tmp_path: Path) -> None:
    runs = {"byol": _rows(knn=False), "no predictor": _rows(knn=False, collapsing=True)}
    path = plot_monitors(runs, tmp_path / "monitors.png", embedding_dim=128)
    assert path is not None
    _assert_valid_png(path)
    assert plot_monitors({"bare": _rows(monitors=False)}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_running_mean_matches_a_loop() -> None:
    values = np.random.default_rng(1).standard_normal(40)
    for half_window in (1, 3, 25):
        expected = []
        for i in range(len(values)):
            window = [values[j] for j in range(i - half_window, i + half_window + 1) if 0 <= j < len(values)]
            expected.append(sum(window) / len(window))
        assert _running_mean(values, half_window) == pytest.approx(expected)
    assert _running_mean(values, 0) is values
