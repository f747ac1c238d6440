"""Reliability, part 1: bad image files, bad settings and untrusted files (part 2, crashes, divergence and
dying workers: tests/test_crashes.py).

Each case here is a row of the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.checkpoints import CheckpointError, load_checkpoint
from selfsup.cli import main
from selfsup.data.datasets import load_image_data
from selfsup.data.images import BadImageError, read_rgb_image, square_resize

TINY = ["--width", "0.125", "--projection-hidden-dim", "64", "--projection-dim", "32", "--no-progress",
        "--no-report", "--num-workers", "0", "--linear-max-iter", "5"]
HINT = "--skip-bad-images"
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


# ---------------------------------------------------------------- untrusted files

class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
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
    assert main(["pretrain", "--data", "digits", "--out", str(tampered), "--resume", "auto", "--epochs", "1",
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
