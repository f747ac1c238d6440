"""Reliability, part 2: killed runs resume to the same weights, diverging runs stop (or skip) keeping a good
checkpoint, and a dying data-loading worker raises instead of hanging (part 1: tests/test_reliability.py).

Each case here is a row of the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pretrain_config
from PIL import Image

from selfsup.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.data.datasets import ImageData
from selfsup.data.loading import FileViewBatches, InMemoryViewBatches
from selfsup.pipeline import pretrain
from selfsup.train.step import NonFiniteLossError

TINY = ["--width", "0.125", "--projection-hidden-dim", "64", "--projection-dim", "32", "--prediction-hidden-dim",
        "64", "--no-progress", "--no-report", "--num-workers", "0", "--linear-max-iter", "5", "--method", "byol"]
HINT = "--skip-bad-images"


# ---------------------------------------------------------------- crashes: SIGKILL, SIGINT, SIGTERM

CHILD = textwrap.dedent("""
    # Runs `selfsup pretrain` and pauses at one point so that the test can signal it there.
    import os, sys, time
    import torch
    torch.set_num_threads(1)  # as the test process (tests/conftest.py), for bitwise-equal runs
    import selfsup.train.loop as loop
    from selfsup.methods.byol import BYOL

    marker, pause_at = os.environ["TEST_MARKER"], os.environ["TEST_PAUSE_AT"]
    received = []
    original_handle = loop._StopSignals._handle

    def handle(self, signum, frame):
        received.append(signum)
        original_handle(self, signum, frame)

    def pause():
        open(marker, "w").close()
        deadline = time.monotonic() + 300
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)

    loop._StopSignals._handle = handle
    if pause_at.startswith("forward:"):  # inside the forward pass of the n-th step (1-based)
        calls, original_forward = [0], BYOL.forward

        def forward(self, *args):
            calls[0] += 1
            if calls[0] == int(pause_at.split(":")[1]):
                pause()
            return original_forward(self, *args)

        BYOL.forward = forward
    else:  # "write:NAME": after the temporary file of checkpoint NAME is written, before its rename
        original_replace = os.replace

        def replace(source, target):
            if os.path.basename(target) == pause_at.split(":")[1]:
                pause()
            return original_replace(source, target)

        os.replace = replace
    from selfsup.cli import main

    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory):
    """256 digits (8 steps an epoch at batch 32, 16 in all) and the final checkpoint of an uninterrupted run."""
    from selfsup.data.datasets import load_digits_data

    root = tmp_path_factory.mktemp("crash")
    digits = load_digits_data("train")
    data = root / "digits256.npz"
    np.savez(data, images=digits.images[:256].numpy(), labels=digits.labels[:256].numpy())
    script = root / "child.py"
    script.write_text(CHILD)

    def args(out: Path) -> list[str]:
        return ["pretrain", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "32",
                "--checkpoint-every-steps", "2", "--keep-checkpoints", "3", "--no-eval-at-end", "--log-every",
                "2", *TINY]

    assert main(args(root / "uninterrupted")) == 0
    final = load_checkpoint(root / "uninterrupted" / "checkpoints" / "step_000000016.pt")
    return root, script, args, final["model"]


def _run_and_signal(script: Path, args: list[str], pause_at: str, sig: int, marker: Path):
    env = {**os.environ, "TEST_MARKER": str(marker), "TEST_PAUSE_AT": pause_at}
    child = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                out, err = child.communicate()
                pytest.fail(f"the run never reached {pause_at} (exit {child.returncode}):\n{out}\n{err}")
            time.sleep(0.02)
        child.send_signal(sig)
        out, err = child.communicate(timeout=240)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return child.returncode, out, err


def _assert_same_weights(checkpoint: Path, reference: dict) -> None:
    model = load_checkpoint(checkpoint)["model"]
    assert model.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(model[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("sig, pause_at, resumed_from", [
    # Killed in epoch 2 between writing checkpoint 12 and renaming it: steps 11 and 12 are lost, the
    # temporary file stays behind, checkpoint 10 is intact. (A kill anywhere else in a step is no harder.)
    (signal.SIGKILL, "write:step_000000012.pt", 10),
    (signal.SIGINT, "forward:12", 12),  # finishes step 12 (epoch 2, batch 4), saves it, exits
    (signal.SIGTERM, "forward:5", 5),  # what schedulers (SLURM, Kubernetes) send before killing
], ids=["SIGKILL-mid-write", "SIGINT", "SIGTERM"])
def test_killed_run_resumes_to_the_same_weights(crash_setup, tmp_path, capsys, sig, pause_at, resumed_from):
    root, script, args, reference = crash_setup
    out = tmp_path / "run"
    code, _, err = _run_and_signal(script, args(out), pause_at, sig, tmp_path / "paused")
    checkpoints = list_checkpoints(out / "checkpoints")
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        temporary = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp"))
        assert len(temporary) == 1 and temporary[0].startswith(".step_000000012.pt.")
    else:
        assert code == 130, err
        assert f"stopped by signal {int(sig)} at step {resumed_from}" in err and "--resume auto" in err
    assert load_checkpoint(checkpoints[-1])["step"] == resumed_from

    assert main([*args(out), "--resume", "auto"]) == 0
    assert f"resumed from {checkpoints[-1]} at step {resumed_from}" in capsys.readouterr().out
    _assert_same_weights(out / "checkpoints" / "step_000000016.pt", reference)
    assert not list((out / "checkpoints").glob("*.tmp")), "the next checkpoint cleans up the unfinished one"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(2, 17, 2)), "one run, each step once"


def test_crash_inside_a_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "step_000000002.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "step": 2}, path)
    before = path.read_bytes()

    def crash(*_):
        raise OSError(28, "No space left on device")

    for target in ("replace", "fsync"):  # dying after the data is written, or while flushing it
        with monkeypatch.context() as patch:
            patch.setattr(os, target, crash)
            with pytest.raises(OSError, match="No space left"):
                save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 4}, path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000002.pt"], "no temporary file left"
        assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_unfinished_writes_are_cleaned_and_never_listed(tmp_path):
    from selfsup.checkpoints import prune_checkpoints

    for step in (2, 4):
        save_checkpoint({"step": step}, tmp_path / f"step_{step:09d}.pt")
    (tmp_path / ".step_000000006.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a killed write
    (tmp_path / "notes.tmp").write_text("someone else's")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt", "step_000000004.pt"]
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "step_000000004.pt"]


def test_metrics_row_cut_short_by_a_kill_does_not_block_resume(tmp_path):
    from selfsup.train.metrics_log import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 3.5}\n{"step": 4, "loss": 3.1}\n{"step": 6, "lo')
    log = MetricsLog(path, resume_step=4, tensorboard=False)
    log.write({"step": 6, "loss": 2.9})
    log.close()
    assert read_metrics(path) == [{"step": 2, "loss": 3.5}, {"step": 4, "loss": 3.1}, {"step": 6, "loss": 2.9}]


# ---------------------------------------------------------------- divergence

def _small_config(tmp_path, digits256, **overrides) -> PretrainConfig:
    values = dict(data=digits256, out=str(tmp_path / "run"), width=0.125, projection_hidden_dim=64,
                  projection_dim=32, prediction_hidden_dim=64, batch_size=32, epochs=2, warmup_epochs=0.0,
                  eval_at_end=False, progress=False, log_every=1, num_workers=0, checkpoint_every_steps=2,
                  keep_checkpoints=10, report=False)
    return pretrain_config(**{**values, **overrides})


@pytest.fixture
def digits256(tmp_path):
    from selfsup.data.datasets import load_digits_data

    digits = load_digits_data("train")
    path = tmp_path / "digits256.npz"
    np.savez(path, images=digits.images[:256].numpy(), labels=digits.labels[:256].numpy())
    return str(path)


def test_huge_learning_rate_stops_with_step_lr_and_cause(tmp_path, capsys, digits256):
    out = tmp_path / "run"
    code = main(["pretrain", "--data", digits256, "--out", str(out), "--epochs", "2", "--batch-size", "32",
                 "--optimizer", "sgd", "--base-lr", "1e8", "--warmup-epochs", "0", "--checkpoint-every-steps",
                 "1", "--keep-checkpoints", "20", "--no-eval-at-end", *TINY])
    assert code == 3
    error = capsys.readouterr().err
    # Seen either in the loss or, when the update that diverged ends at a checkpoint, in the weights.
    found = re.search(r"(loss is (nan|inf|-inf) at|weights became NaN or infinite by) step (\d+) .*lr ([0-9.e+]+)",
                      error)
    assert found, error
    failed_at = int(found.group(3))
    assert 0 < failed_at < 16 and float(found.group(4)) > 1e6
    assert "learning rate too high" in error
    good = list_checkpoints(out / "checkpoints")
    assert f"The last good checkpoint is {good[-1]}." in error
    last = load_checkpoint(good[-1])
    assert failed_at - 1 <= last["step"] <= failed_at, "every step before the failing one was checkpointed"
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def _poison_batches(monkeypatch, at_batches: set[int]) -> None:
    """One NaN pixel in the first view of the given batches of epoch 1: the loss of those steps is NaN."""
    original = InMemoryViewBatches.epoch

    def epoch(self, epoch, start_batch=0):
        for index, (view1, view2, labels) in enumerate(original(self, epoch, start_batch), start=start_batch):
            if epoch == 0 and index in at_batches:
                view1 = view1.clone()
                view1[0, 0, 0, 0] = float("nan")
            yield view1, view2, labels

    monkeypatch.setattr(InMemoryViewBatches, "epoch", epoch)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, digits256):
    _poison_batches(monkeypatch, {3})
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(epoch 1, lr [0-9.e-]+\)") as info:
        pretrain(_small_config(tmp_path, digits256), log=lambda *_: None)
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [load_checkpoint(p)["step"] for p in checkpoints] == [2]
    assert f"The last good checkpoint is {checkpoints[0]}" in str(info.value)


def test_nonfinite_loss_skip_continues_with_clean_statistics(tmp_path, monkeypatch, digits256):
    _poison_batches(monkeypatch, {3, 7})
    messages = []
    result = pretrain(_small_config(tmp_path, digits256, on_nonfinite="skip", max_steps=8), log=messages.append)
    assert result.steps == 8, "a skipped last step still ends the run at max_steps"
    assert sum("skipping step: loss is nan at step" in m for m in messages) == 2
    assert "2 step(s) skipped for a non-finite loss" in messages
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 5, 6, 7]  # batches 3 and 7 skipped
    state = load_checkpoint(result.checkpoint)
    # A NaN batch passes through BatchNorm in the forward pass; the skipped step must not keep its statistics.
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------- long runs: a data-loading worker dies

def _die_in_worker_by_exit(image):
    os._exit(7)


def _die_in_worker_by_kill(image):  # as the out-of-memory killer does
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("die", [_die_in_worker_by_exit, _die_in_worker_by_kill], ids=["os._exit", "SIGKILL"])
def test_dead_loader_worker_raises_instead_of_hanging(tmp_path, die):
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(paths[-1])
    batches = FileViewBatches(ImageData(name="files", paths=paths), die, batch_size=4, seed=0,
                                 device=torch.device("cpu"), num_workers=1)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly"):
        list(batches.epoch(0))
    assert time.monotonic() - started < 60  # the loader's own timeout is 600 s; death is noticed at once
