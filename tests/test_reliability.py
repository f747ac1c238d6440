"""Reliability: bad files and settings, killed and diverging runs, untrusted checkpoints, dying workers.

Each case here is a row of the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.data.datasets import ImageData, load_image_data
from selfsup.data.images import BadImageError, read_rgb_image, square_resize
from selfsup.data.loading import FileTwoViewBatches, InMemoryTwoViewBatches
from selfsup.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from selfsup.train.loop import NonFiniteLossError, pretrain

TINY = ["--width", "0.125", "--projection-hidden-dim", "64", "--projection-dim", "32", "--prediction-hidden-dim",
        "64", "--no-progress", "--no-report", "--num-workers", "0", "--linear-epochs", "5"]
HINT = "--skip-bad-images"


def _noise(side: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    shape = (side, side, channels) if channels > 1 else (side, side)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header announcing side x side RGB pixels (10^10 here), with almost no data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b""))
            + _png_chunk(b"IEND", b""))


def _encoded(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0, 0, 0] * 254)
    image.info["transparency"] = 0
    return image


# name -> (file bytes, None for "decodes to an 8x8-ish RGB image" or the regex of the error)
def _bad_files() -> dict[str, tuple[bytes, str | None]]:
    png, jpeg = _encoded(_noise(32), "PNG"), _encoded(_noise(32), "JPEG", quality=90)
    corrupt_png = bytearray(png)
    corrupt_png[60:160] = bytes(100)  # inside the compressed pixel data
    corrupt_jpeg_header = bytearray(jpeg)
    corrupt_jpeg_header[2:40] = bytes(38)
    return {
        "truncated.png": (png[: len(png) // 2], "truncated or corrupt"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "corrupt.png": (bytes(corrupt_png), "truncated or corrupt"),
        "corrupt_header.jpg": (bytes(corrupt_jpeg_header), "not an image file"),
        "notes.png": (b"a text file with an image extension\n", "not an image file"),
        "zero.png": (b"", "empty"),
        "bomb.png": (_bomb_png(), "too large to decode safely"),
    }


@pytest.mark.parametrize("name", list(_bad_files()))
def test_bad_file_in_a_folder_is_named_or_skipped(tmp_path, name):
    content, match = _bad_files()[name]
    for i in range(4):
        Image.fromarray(_noise(8, i)).save(tmp_path / f"good{i}.png")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadImageError, match=match) as info:
        read_rgb_image(tmp_path / name)
    assert str(tmp_path / name) in str(info.value) and HINT in str(info.value)
    with pytest.raises(BadImageError, match=re.escape(name)):
        load_image_data(str(tmp_path), progress=False)
    data = load_image_data(str(tmp_path), skip_bad_images=True, progress=False)
    assert len(data) == 4 and [Path(p).name for p, _ in data.skipped] == [name]
    assert re.search(match, data.skipped[0][1])


def test_jpeg_with_corrupt_scan_data_decodes(tmp_path):
    # libjpeg recovers from garbage inside the entropy-coded data (as every viewer does): the file is
    # usable, some pixels are wrong, and nothing tells that apart from a real image.
    jpeg = bytearray(_encoded(_noise(64), "JPEG", quality=90))
    middle = len(jpeg) // 2
    jpeg[middle: middle + 200] = np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes()
    (tmp_path / "garbled.jpg").write_bytes(bytes(jpeg))
    image = read_rgb_image(tmp_path / "garbled.jpg")
    assert image.mode == "RGB" and image.size == (64, 64)


def test_modes_sizes_and_odd_names_decode(tmp_path):
    sixteen = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    decoded = np.asarray(read_rgb_image(tmp_path / "sixteen.png"))
    expected = np.round(sixteen.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert decoded.shape == (8, 8, 3) and np.array_equal(decoded[..., 0], expected)  # scaled, not clipped

    _palette_with_transparency().save(tmp_path / "palette.png")
    assert np.asarray(read_rgb_image(tmp_path / "palette.png"))[0, 0].tolist() == [200, 100, 50]

    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one_pixel.png")
    one = read_rgb_image(tmp_path / "one_pixel.png")
    assert np.asarray(square_resize(one, 8)).reshape(-1, 3).tolist() == [[10, 20, 30]] * 64

    odd_name = Path(os.fsdecode(b"\xff\xfe.png"))  # not UTF-8: Linux file names are bytes
    Image.fromarray(_noise(8)).save(tmp_path / odd_name)
    assert os.fsencode(tmp_path / odd_name).endswith(b"/\xff\xfe.png")
    assert np.array_equal(np.asarray(read_rgb_image(tmp_path / odd_name)), _noise(8))


def test_very_large_image_decodes(tmp_path):
    Image.new("RGB", (5000, 5000), (7, 8, 9)).save(tmp_path / "large.png")  # 25 Mpixel, under PIL's limit
    image = read_rgb_image(tmp_path / "large.png")
    assert image.size == (5000, 5000)
    assert np.asarray(square_resize(image, 32))[16, 16].tolist() == [7, 8, 9]


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.fromarray(_noise(8)).save(path)
    real_open = open

    def open_refusing_locked(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # chmod cannot stop root from reading: refuse the open the way the kernel would for another user.
    monkeypatch.setattr("builtins.open", open_refusing_locked)
    with pytest.raises(BadImageError, match="locked.png cannot be read \\(permission denied\\)"):
        read_rgb_image(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; "
                    "test_unreadable_file_is_named simulates the refusal instead")
def test_unreadable_file_by_mode(tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(_noise(8)).save(path)
    path.chmod(0)
    with pytest.raises(BadImageError, match="permission denied"):
        read_rgb_image(path)


def test_skip_bad_images_through_the_command_with_one_class(tmp_path, capsys):
    """A one-class folder with two bad files (one named with non-UTF-8 bytes): pretraining skips, counts
    and lists them byte-exact; the evaluation explains it needs two classes."""
    folder = tmp_path / "photos"
    (folder / "only").mkdir(parents=True)
    for i in range(16):
        Image.fromarray(_noise(12, i)).save(folder / "only" / f"{i:02d}.png")
    (folder / "only" / "empty.png").write_bytes(b"")
    (folder / "only" / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--knn-k", "5", "--test-data", str(folder), *TINY]
    assert main(args) == 2
    assert f"{folder / 'only'}/bad\\xff.jpg is not an image file" in capsys.readouterr().err  # shown escaped
    assert not out.exists()

    assert main([*args, "--skip-bad-images"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 2 bad image(s); listed in {out / 'skipped_images.txt'}" in printed
    assert "has 1 class: skipping the kNN / linear table, which needs at least 2" in printed
    listed = (out / "skipped_images.txt").read_bytes().splitlines()
    assert [line.split(b"\t")[0] for line in listed] == [os.fsencode(folder / "only" / name) for name in
                                                         (os.fsdecode(b"bad\xff.jpg"), "empty.png")]
    assert b"not an image file" in listed[0] and b"empty (0 bytes)" in listed[1]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2  # 16 good // 8

    assert main(["eval", "--checkpoint", str(out / "backbone.pt"), "--train-data", str(folder),
                 "--test-data", str(folder), "--no-baselines", "--skip-bad-images"]) == 2
    assert "evaluation needs at least 2 classes; photos has 1" in capsys.readouterr().err


def test_non_utf8_class_folder_is_shown_with_escapes(tmp_path):
    for name in (b"cats", b"d\xf6gs"):  # Latin-1 bytes, not UTF-8
        folder = tmp_path / os.fsdecode(name)
        folder.mkdir()
        for i in range(2):
            Image.fromarray(_noise(8, i)).save(folder / f"{i}.png")
    data = load_image_data(str(tmp_path), progress=False)
    assert data.classes == ["cats", "d\\xf6gs"] and data.labels.tolist() == [0, 0, 1, 1]
    json.dumps(data.classes).encode("utf-8")  # printable, storable


@pytest.mark.parametrize("flags, setting", [
    (["--epochs", "-1"], "'epochs'"),
    (["--batch-size", "5000"], "batch_size"),
    (["--temperature", "0", "--method", "simclr"], "'temperature'"),
    (["--temperature", "-0.1"], "'temperature'"),
    (["--width", "0"], "'width'"),
    (["--config", "RECIPE"], "'learning_rate'"),
    (["--data", "EMPTY"], "EMPTY"),
])
def test_bad_settings_fail_before_any_work(tmp_path, capsys, flags, setting):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: byol\nlearning_rate: 0.1\n")
    (tmp_path / "empty").mkdir()
    replace = {"RECIPE": str(recipe), "EMPTY": str(tmp_path / "empty")}
    flags = [replace.get(flag, flag) for flag in flags]
    setting = replace.get(setting, setting)
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *TINY, *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("selfsup pretrain: error:")
    assert setting in error
    assert not out.exists(), "nothing may be written before the settings are checked"


def test_unknown_method_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--method", "moco", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "--method" in error and "'moco'" in error and "byol" in error


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
    from selfsup.train.checkpoint import prune_checkpoints

    for step in (2, 4):
        save_checkpoint({"step": step}, tmp_path / f"step_{step:09d}.pt")
    (tmp_path / ".step_000000006.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a killed write
    (tmp_path / "notes.tmp").write_text("someone else's")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt", "step_000000004.pt"]
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "step_000000004.pt"]


def test_metrics_row_cut_short_by_a_kill_does_not_block_resume(tmp_path):
    from selfsup.train.logging import MetricsLog, read_metrics

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
    return PretrainConfig(**{**values, **overrides})


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
    original = InMemoryTwoViewBatches.epoch

    def epoch(self, epoch, start_batch=0):
        for index, (view1, view2, labels) in enumerate(original(self, epoch, start_batch), start=start_batch):
            if epoch == 0 and index in at_batches:
                view1 = view1.clone()
                view1[0, 0, 0, 0] = float("nan")
            yield view1, view2, labels

    monkeypatch.setattr(InMemoryTwoViewBatches, "epoch", epoch)


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


# ---------------------------------------------------------------- untrusted files

class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys, digits256):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 4, "payload": _RunsCode(marker)}, evil)
    torch.load(evil, weights_only=False)  # proof that the payload is live: plain unpickling runs it
    assert marker.read_text() == "code ran"
    marker.unlink()

    with pytest.raises(CheckpointError, match="refused to load .*evil.pt"):
        load_checkpoint(evil)
    for command in (["eval", "--checkpoint", str(evil), "--no-baselines"],
                    ["export", "--checkpoint", str(evil), "--output", str(tmp_path / "out.pt")]):
        assert main(command) == 2
        assert "refused to load" in capsys.readouterr().err
    tampered = tmp_path / "run"
    (tampered / "checkpoints").mkdir(parents=True)
    (tampered / "checkpoints" / "step_000000004.pt").write_bytes(evil.read_bytes())
    assert main(["pretrain", "--data", digits256, "--out", str(tampered), "--resume", "auto", "--epochs", "1",
                 "--batch-size", "32", "--no-eval-at-end", *TINY]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_yaml_recipe_with_python_tag_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["pretrain", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not marker.exists()


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
        Image.fromarray(_noise(8, i)).save(paths[-1])
    batches = FileTwoViewBatches(ImageData(name="files", paths=paths), die, batch_size=4, seed=0,
                                 device=torch.device("cpu"), num_workers=1)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly"):
        list(batches.epoch(0))
    assert time.monotonic() - started < 60  # the loader's own timeout is 600 s; death is noticed at once
