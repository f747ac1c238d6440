"""Reliability, part 3: a run's folder is its own, no setting silently changes a resumed run, and every bad
setting or path ends in one line naming it (exit 2). Each case is a row of docs/reliability.md."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.checkpoints import list_checkpoints
from selfsup.cli import main
from selfsup.run_folder import LOCK, MARKER

TINY = ["--width", "0.125", "--projection-hidden-dim", "32", "--projection-dim", "16", "--prediction-hidden-dim",
        "32", "--image-size", "16", "--batch-size", "32", "--no-progress", "--no-report", "--num-workers", "0",
        "--no-eval-at-end", "--log-every", "1", "--method", "byol"]


@pytest.fixture
def digits128(tmp_path) -> str:
    from selfsup.data.datasets import load_digits_data

    digits = load_digits_data("train")
    path = tmp_path / "digits128.npz"
    np.savez(path, images=digits.images[:128].numpy(), labels=digits.labels[:128].numpy())
    return str(path)


def _pretrain(data: str, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", data, "--out", str(out), "--epochs", "1", *TINY, *extra])


def _one_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "Traceback" not in error
    return error


# ---------------------------------------------------------------- the run folder is the run's own

def test_a_second_run_into_the_same_folder_is_refused_until_resume_or_overwrite(tmp_path, digits128, capsys):
    out = tmp_path / "run"
    assert _pretrain(digits128, out) == 0
    capsys.readouterr()
    metrics = (out / "metrics.jsonl").read_text()
    checkpoints = list_checkpoints(out / "checkpoints")
    assert _pretrain(digits128, out) == 2
    error = _one_line(capsys)
    assert str(out) in error and "another run" in error and "--resume auto" in error and "--overwrite" in error
    assert (out / "metrics.jsonl").read_text() == metrics and list_checkpoints(out / "checkpoints") == checkpoints

    assert _pretrain(digits128, out, "--overwrite") == 0
    aside = [p for p in out.iterdir() if p.name.startswith("checkpoints-replaced-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == [p.name for p in checkpoints]
    assert not (out / LOCK).exists(), "the lock is released at the end"


def test_a_folder_of_the_users_files_is_refused_and_left_alone(tmp_path, digits128, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "notes.txt").write_text("do not lose")
    assert _pretrain(digits128, out) == 2
    error = _one_line(capsys)
    assert "did not write" in error and "config.json" in error and "notes.txt" in error
    assert (out / "config.json").read_text() == '{"my": "settings"}' and sorted(os.listdir(out)) == [
        "config.json", "notes.txt"]


def test_a_folder_locked_by_a_live_process_is_refused_and_a_stale_lock_is_taken_over(tmp_path, digits128, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert _pretrain(digits128, out) == 2
    error = _one_line(capsys)
    assert f"in use by process {os.getppid()}" in error and LOCK in error
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert _pretrain(digits128, out) == 0, "a lock whose process is gone is stale"
    assert (out / MARKER).exists() and not (out / LOCK).exists()


def test_an_out_that_is_a_file_is_named(tmp_path, digits128, capsys):
    out = tmp_path / "a_file"
    out.write_text("x")
    assert _pretrain(digits128, out) == 2
    assert "is a file, not a folder" in _one_line(capsys) and out.read_text() == "x"


def test_a_read_only_or_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, digits128, capsys,
                                                                         monkeypatch):
    import selfsup.files

    out = tmp_path / "run"
    real = selfsup.files.atomic_write_bytes
    writes = []

    def failing(path, data):
        writes.append(Path(path).name)
        if Path(path).name == "step_000000004.pt":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, data)

    monkeypatch.setattr(selfsup.files, "atomic_write_bytes", failing)
    assert _pretrain(digits128, out, "--checkpoint-every-steps", "2") == 2
    error = _one_line(capsys)
    assert "Read-only file system" in error and "step_000000004.pt" in error
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000000002.pt"]
    assert not list((out / "checkpoints").glob(".*.tmp")), "no half-written file"


def test_an_export_onto_a_folder_is_one_line(tmp_path, digits128, capsys):
    out = tmp_path / "run"
    assert _pretrain(digits128, out) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(out / "backbone.pt"), "--output", str(tmp_path)]) == 2
    assert str(tmp_path) in _one_line(capsys)


# ---------------------------------------------------------------- resuming never silently changes the run

@pytest.mark.parametrize(("flags", "named"), [
    (["--batch-size", "16"], "batch_size=32, this run has batch_size=16"),
    (["--base-lr", "0.5"], "base_lr=None, this run has base_lr=0.5"),
    (["--width", "0.25"], "width=0.125, this run has width=0.25"),
    (["--projection-dim", "8"], "projection_dim=16, this run has projection_dim=8"),
    (["--optimizer", "sgd"], "optimizer='auto', this run has optimizer='sgd'"),
    (["--epochs", "3"], "epochs=1, this run has epochs=3"),
])
def test_resuming_with_a_setting_that_changes_the_run_is_refused(tmp_path, digits128, capsys, flags, named):
    out = tmp_path / "run"
    assert _pretrain(digits128, out) == 0
    capsys.readouterr()
    assert _pretrain(digits128, out, "--resume", "auto", *flags) == 2
    assert named in _one_line(capsys)


def test_resuming_may_change_how_the_run_goes(tmp_path, digits128, capsys):
    out = tmp_path / "run"
    assert _pretrain(digits128, out, "--max-steps", "2") == 0
    assert _pretrain(digits128, out, "--resume", "auto", "--log-every", "2", "--keep-checkpoints", "5") == 0


def test_resuming_from_a_file_that_is_not_a_run_checkpoint_says_what_it_is(tmp_path, digits128, capsys):
    out = tmp_path / "run"
    assert _pretrain(digits128, out) == 0
    assert main(["export", "--checkpoint", str(out / "backbone.pt"), "--output", str(tmp_path / "tv.pt")]) == 0
    capsys.readouterr()
    assert _pretrain(digits128, out, "--resume", str(out / "backbone.pt")) == 2
    assert "an exported backbone" in _one_line(capsys)
    assert _pretrain(digits128, out, "--resume", str(tmp_path / "tv.pt")) == 2
    assert "a state dict of weights" in _one_line(capsys)


# ---------------------------------------------------------------- one clear line for every bad setting

@pytest.mark.parametrize(("flags", "named"), [
    (["--base-lr", "0"], "'base_lr' must be > 0"),
    (["--batch-size", "1"], "BatchNorm needs at least 2"),
    (["--device", "gpu"], "setting 'device': 'gpu' is not a device"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "cuda:1"], "CUDA is not available"),
    (["--devices", "3"], "for each of the 3 processes"),
    (["--epochs", "1.5"], "argument --epochs: invalid integer value: '1.5'"),
    (["--batch-size", "abc"], "argument --batch-size: invalid integer value: 'abc'"),
])
def test_bad_settings_are_one_line(tmp_path, digits128, capsys, flags, named):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) if "invalid" in named else _no_exception() as info:
        code = _pretrain(digits128, out, *flags)
    if "invalid" in named:
        code = info.value.code
    assert code == 2
    assert named in _one_line(capsys)
    assert not out.exists()


class _no_exception:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_yaml_numbers_like_1e_3_are_numbers_and_duplicate_keys_are_named(tmp_path, digits128, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base_lr: 5e-1\nweight_decay: 1E-6\nmethod_args:\n  temperature: 2e-1\nmethod: simclr\n")
    from selfsup.config import PretrainConfig
    from selfsup.settings import from_dict, load_yaml

    config = from_dict(PretrainConfig, load_yaml(recipe))
    assert (config.base_lr, config.weight_decay, config.method_args.temperature) == (0.5, 1e-6, 0.2)
    recipe.write_text("epochs: 2\nbatch_size: 32\nepochs: 3\n")
    assert main(["pretrain", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    error = _one_line(capsys)
    assert "duplicate key 'epochs'" in error and "line 3" in error and "r.yaml" in error


def test_labels_of_the_wrong_shape_are_named(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((64, 8, 8, 3), np.uint8), labels=np.zeros((64, 3)))
    assert _pretrain(str(path), tmp_path / "run") == 2
    error = _one_line(capsys)
    assert "bad.npz" in error and "(64, 3)" in error


def test_a_nan_from_a_low_temperature_names_the_temperature(tmp_path, digits128, capsys, monkeypatch):
    from selfsup.methods import SimCLR

    forward = SimCLR.forward

    def diverging(self, view1, view2):  # what NT-Xent at t = 0.01 did after a few steps: the loss is NaN
        output = forward(self, view1, view2)
        return output._replace(loss=output.loss * float("nan"))

    monkeypatch.setattr(SimCLR, "forward", diverging)
    assert main(["pretrain", "--method", "simclr", "--temperature", "0.01", "--data", digits128, "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--width", "0.125", "--batch-size", "32",
                 "--no-progress", "--no-eval-at-end", "--no-report", "--num-workers", "0"]) == 3
    error = _one_line(capsys)
    assert "loss is nan" in error and "a temperature this low (temperature 0.01)" in error
    assert error.index("temperature") < error.index("learning rate"), "the temperature is named first"


def test_a_second_ctrl_c_stops_at_once():
    import signal

    from selfsup.train.loop import _StopSignals

    with _StopSignals() as stop:
        stop._handle(signal.SIGINT, None)  # the first asks for a checkpoint and a clean stop
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)


# ---------------------------------------------------------------- the GPU code paths, torch.cuda mocked

def test_cuda_devices_get_an_index_and_set_device_receives_it(monkeypatch):
    from selfsup import devices
    from selfsup.config import PretrainConfig
    from selfsup.train import loop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve_device("cuda") == torch.device("cuda", 1), "each torchrun process its own GPU"
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        devices.resolve_device("cuda:2")
    monkeypatch.delenv("LOCAL_RANK")
    received = []
    monkeypatch.setattr(torch.cuda, "set_device", received.append)
    assert loop.start_processes(PretrainConfig(device="cuda")) == torch.device("cuda", 0)
    assert received == [torch.device("cuda", 0)] and received[0].index == 0


def test_settings_that_waste_a_run_are_warned_about(tmp_path, digits128):
    from conftest import pretrain_config

    from selfsup.pipeline import pretrain

    lines = []
    pretrain(pretrain_config(data=digits128, out=str(tmp_path / "run"), epochs=1, warmup_epochs=10.0, image_size=16,
                             crop_size=24, width=0.125, batch_size=32, projection_hidden_dim=32, projection_dim=16,
                             prediction_hidden_dim=32, max_steps=1, eval_at_end=False, report=False, progress=False,
                             num_workers=0), log=lines.append)
    assert any(line.startswith("warmup: 0 steps") and "a tenth of the run" in line for line in lines)
    assert any("crop_size 24 is larger than image_size 16" in line for line in lines)
