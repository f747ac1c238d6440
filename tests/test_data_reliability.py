"""Reliability of the data layer: class labels matched by name between splits, the image side of a data set
as a whole, EXIF orientation, one decode into memory, the test split of a data setting, array labels of
the wrong shape, symbolic links. Each case is a row of docs/reliability.md ("Data sets and labels")."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import datasets, folders, images
from selfsup.data.datasets import (
    BUILTIN_DATASETS,
    SMALL_IMAGE_SIDE,
    dataset_image_side,
    decode_into_memory,
    load_folder_data,
    load_image_data,
    load_test_split,
    match_classes,
    scan_folder,
    scan_image_folder,
)
from selfsup.data.images import BadImageError, read_image_side, read_rgb_image
from selfsup.data.subsets import subset_data

ORIENTATION = 0x0112


def _noise(height: int, width: int | None = None, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width or height, 3), dtype=np.uint8)


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _class_folders(root, counts: dict[str, int], side: int = 8):
    """root/<class>/<i>.png, ``counts[class]`` images each (0: an empty class folder)."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _save(root / name / f"{i}.png", np.full((side, side, 3), 10 * c, np.uint8))
    return root


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- 1. labels matched by class name -------------------------------------------------------------------------

def test_empty_test_class_folder_no_longer_shifts_the_labels(tmp_path):
    """Before: the test split's labels were positions among its non-empty folders, so an empty 'b' made
    test 'c' label 1 (train 'b'). Now the empty folder is named, and once removed 'c' keeps label 2."""
    train = load_image_data(str(_class_folders(tmp_path / "train", {"a": 2, "b": 2, "c": 2})), progress=False)
    test = load_image_data(str(_class_folders(tmp_path / "test", {"a": 1, "b": 0, "c": 1})), progress=False)
    assert test.classes == ["a", "c"] and test.empty_classes == ["b"] and test.labels.tolist() == [0, 1]
    assert any("'b' have no images and are left out" in note for note in test.notes)
    with pytest.raises(ValueError) as info:
        match_classes(train, test)
    message = _one_line(info)
    assert "class folder(s) 'b' of the test data" in message and str(tmp_path / "test") in message
    assert "add images to them or remove them" in message

    (tmp_path / "test" / "b").rmdir()
    test = load_image_data(str(tmp_path / "test"), progress=False)
    matched = match_classes(train, test)
    assert matched.classes == ["a", "b", "c"] and matched.labels.tolist() == [0, 2]
    assert matched.notes == [f"the test data {tmp_path / 'test'} has no images of 1 of the 3 training classes "
                             "('b'); its accuracy is over the others"]
    assert test.labels.tolist() == [0, 1], "the input is left alone"


def test_empty_training_class_folder_is_an_error_when_matching(tmp_path):
    train = load_image_data(str(_class_folders(tmp_path / "train", {"a": 2, "b": 0, "c": 2})), progress=False)
    test = load_image_data(str(_class_folders(tmp_path / "test", {"a": 1, "c": 1})), progress=False)
    assert train.num_classes == 2  # pretraining on it still works, the note says what was left out
    with pytest.raises(ValueError) as info:
        match_classes(train, test)
    assert "'b' of the training data" in _one_line(info)


def test_test_class_unknown_to_training_is_named_with_a_close_match(tmp_path):
    train = load_image_data(str(_class_folders(tmp_path / "train", {"cat": 2, "dog": 2})), progress=False)
    test = load_image_data(str(_class_folders(tmp_path / "test", {"Dog": 1, "cat": 1, "fox": 1})), progress=False)
    with pytest.raises(ValueError) as info:
        match_classes(train, test)
    message = _one_line(info)
    assert "class folder(s) 'Dog', 'fox' that the training data" in message
    assert "is 'Dog' meant to be 'dog'?" in message and "rename or remove them" in message


def test_same_classes_in_another_order_of_folders_match(tmp_path):
    """Matching is by name: the order of listing and of the non-empty folders does not matter."""
    train = load_image_data(str(_class_folders(tmp_path / "train", {"a": 1, "b": 1, "c": 1, "d": 1})),
                            progress=False)
    test = load_image_data(str(_class_folders(tmp_path / "test", {"b": 2, "d": 1})), progress=False)
    assert match_classes(train, test).labels.tolist() == [1, 1, 3]


def test_positional_labels_for_arrays_and_builtins(tmp_path):
    digits = load_image_data("digits", "train")
    np.savez(tmp_path / "ten.npz", images=_noise(8)[None].repeat(10, 0), labels=np.arange(10))
    np.savez(tmp_path / "nine.npz", images=_noise(8)[None].repeat(9, 0), labels=np.arange(9))
    matched = match_classes(digits, load_image_data(str(tmp_path / "ten.npz")))
    assert matched.labels.tolist() == list(range(10)) and matched.classes == digits.classes
    with pytest.raises(ValueError) as info:
        match_classes(digits, load_image_data(str(tmp_path / "nine.npz")))
    message = _one_line(info)
    assert "has 10 classes and the test data" in message and "nine.npz 9" in message
    # A folder against an array: by position too, with the folder's class names.
    folder = load_image_data(str(_class_folders(tmp_path / "f", {f"c{i}": 1 for i in range(10)})), progress=False)
    assert match_classes(folder, load_image_data(str(tmp_path / "ten.npz"))).classes[0] == "c0"
    assert match_classes(digits, load_image_data("digits", "test")).labels.max() == 9


def test_unlabeled_data_cannot_be_matched(tmp_path):
    for i in range(2):
        _save(tmp_path / "flat" / f"{i}.png", _noise(8, seed=i))
    flat = load_image_data(str(tmp_path / "flat"), progress=False)
    with pytest.raises(ValueError) as info:
        match_classes(load_image_data("digits"), flat)
    assert "test data" in _one_line(info) and "has no labels" in str(info.value)


def test_scan_folder_keeps_its_signature_and_scan_image_folder_names_empty_folders(tmp_path):
    root = _class_folders(tmp_path / "data", {"a": 1, "b": 0, "c": 1})
    (root / ".hidden").mkdir()
    paths, labels, classes = scan_folder(root)
    assert classes == ["a", "c"] and labels == [0, 1] and len(paths) == 2
    scan = scan_image_folder(root)
    assert scan.empty_classes == ["b"] and scan.classes == ["a", "c"]


def test_folder_of_split_folders_says_which_folder_to_give(tmp_path):
    _class_folders(tmp_path / "cifar" / "train", {"a": 1})
    _class_folders(tmp_path / "cifar" / "test", {"a": 1})
    with pytest.raises(ValueError) as info:
        load_image_data(str(tmp_path / "cifar"))
    assert "no images" in _one_line(info) and "sub-folder(s) 'test', 'train' hold folders" in str(info.value)


# --- 2. the image side of the data set as a whole -------------------------------------------------------------

def test_one_tiny_or_huge_first_file_no_longer_decides_the_side(tmp_path):
    """Before: the first file (here 000_*.png) gave the side: 1 px, or 100 px and so streaming from disk."""
    for name, side in (("tiny", 1), ("huge", 100)):
        folder = tmp_path / name
        _save(folder / f"000_{name}.png", _noise(side))
        for i in range(9):
            _save(folder / f"{i + 1:03d}.png", _noise(16, seed=i))
        _save(folder / "999_wide.png", _noise(16, 24))
        data = load_image_data(str(folder), progress=False)
        assert data.in_memory and data.images.shape == (11, 3, 16, 16), name
        assert data.resized == 2
        assert data.notes == [f"{folder}: resized 2 of 11 images to 16 px, the data set's median side "
                              "(short side scaled, then center-cropped)"]


def test_large_images_stay_on_disk_whatever_the_first_file(tmp_path):
    _save(tmp_path / "000_small.png", _noise(8))
    for i in range(3):
        _save(tmp_path / f"{i + 1}.png", _noise(SMALL_IMAGE_SIDE + 16, seed=i))
    data = load_image_data(str(tmp_path), progress=False)
    assert not data.in_memory and len(data.paths) == 4 and data.resized == 0 and data.notes == []


def test_side_is_the_lower_median_of_the_headers_of_an_evenly_spaced_sample(tmp_path, monkeypatch):
    paths = [_save(tmp_path / f"{i:02d}.png", _noise(side, seed=i)) for i, side in enumerate([4, 30, 8, 10, 12,
                                                                                             14, 16, 200])]
    assert dataset_image_side(paths) == 12  # sides sorted 4 8 10 12 | 14 16 30 200: the lower median
    read = []
    monkeypatch.setattr(folders, "read_image_side", lambda path: read.append(path.name) or read_image_side(path))
    monkeypatch.setattr(folders, "read_rgb_image", lambda path: pytest.fail("a pixel was decoded"))
    monkeypatch.setattr(folders, "SIDE_SAMPLE", 3)
    assert dataset_image_side(paths) == 8  # files 0, 2, 5: sides 4, 8, 14
    assert read == ["00.png", "02.png", "05.png"]


def test_header_probe_names_a_bad_file_or_skips_it(tmp_path):
    paths = [_save(tmp_path / f"{i}.png", _noise(8, seed=i)) for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths.append(tmp_path / "bad.png")
    with pytest.raises(BadImageError, match="bad.png is not an image file"):
        dataset_image_side(paths)
    assert dataset_image_side(paths, skip_bad_images=True) == 8
    with pytest.raises(ValueError, match="none of the 1 image files checked could be read"):
        dataset_image_side(paths[3:], skip_bad_images=True)


def test_read_image_side_reads_the_header_only(tmp_path):
    path = _save(tmp_path / "photo.png", _noise(40, 30))
    data = path.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    assert read_image_side(path) == 40 and read_image_side(tmp_path / "truncated.png") == 40
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        read_rgb_image(tmp_path / "truncated.png")


# --- 3. EXIF orientation ---------------------------------------------------------------------------------

UPRIGHT = {  # EXIF orientation -> what a viewer shows, from the stored pixels (independent of PIL)
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = _noise(4, 6)
    path = _save(tmp_path / "photo.png", stored, exif=_exif(orientation))
    assert Image.open(path).getexif()[ORIENTATION] == orientation
    assert np.array_equal(np.asarray(read_rgb_image(path)), UPRIGHT[orientation](stored))


def test_exif_orientation_of_a_jpeg_phone_photo(tmp_path):
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:16, :24] = (255, 0, 0)  # red top-left quadrant, stored sideways
    path = _save(tmp_path / "phone.jpg", stored, exif=_exif(6), quality=95)
    upright = np.asarray(read_rgb_image(path))
    assert upright.shape == (48, 32, 3)
    assert upright[4, -4].tolist()[0] > 200 and upright[-4, 4].tolist()[0] < 50  # red now top-right


def test_exif_orientation_with_sixteen_bit_palette_and_rgba(tmp_path):
    sixteen = np.zeros((4, 6), np.uint16)
    sixteen[0, 0] = 65535
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png", exif=_exif(8))
    image = np.asarray(read_rgb_image(tmp_path / "sixteen.png"))
    assert image.shape == (6, 4, 3) and image[-1, 0].tolist() == [255, 255, 255] and image.sum() == 3 * 255

    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0, 0, 0] * 254)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0, exif=_exif(3))
    image = np.asarray(read_rgb_image(tmp_path / "palette.png"))
    assert image.shape == (4, 6, 3) and image[-1, -1].tolist() == [0, 0, 0] and image[0, 0].tolist() == [200, 100,
                                                                                                            50]
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 128)
    _save(tmp_path / "rgba.png", rgba, exif=_exif(2))
    assert np.asarray(read_rgb_image(tmp_path / "rgba.png"))[0, -1].tolist() == [255, 0, 0]


def test_malformed_exif_decodes_as_stored(tmp_path):
    stored = _noise(4, 6)
    path = _save(tmp_path / "odd.png", stored, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12")
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        assert np.array_equal(np.asarray(read_rgb_image(path)), stored)


def test_rotated_photos_in_a_folder_share_one_side(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.jpg", _noise(12, 16, seed=i), exif=_exif(6 if i else 1))
    data = load_image_data(str(tmp_path), progress=False)
    assert data.images.shape == (3, 3, 16, 16) and data.resized == 3  # 16 x 12 or 12 x 16: all cropped


# --- 4. one decode into memory ---------------------------------------------------------------------------

def test_decode_into_memory_is_the_one_decoder(tmp_path, monkeypatch):
    root = _class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    opened = []
    monkeypatch.setattr(folders, "read_image_side", lambda path: pytest.fail(f"{path} was opened"))
    listed = load_folder_data(root, in_memory=False)
    monkeypatch.undo()
    assert not listed.in_memory and len(listed) == 7 and listed.named_classes

    decoded_by = folders.read_rgb_image
    monkeypatch.setattr(folders, "read_rgb_image", lambda path: opened.append(path) or decoded_by(path))
    with pytest.raises(BadImageError, match="broken.png"):
        decode_into_memory(listed)
    opened.clear()
    data = decode_into_memory(listed, skip_bad_images=True)
    assert data.in_memory and data.images.shape == (6, 3, 8, 8) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(opened) == 7, "each file decoded once"
    assert [os.path.basename(p) for p, _ in data.skipped] == ["broken.png"]
    assert data.classes == ["a", "b"] and data.named_classes and data.source == str(root)
    assert decode_into_memory(data) is data


def test_decode_into_memory_leaves_large_images_on_disk_and_keeps_subsets_named(tmp_path):
    root = _class_folders(tmp_path / "big", {"a": 2, "b": 2}, side=SMALL_IMAGE_SIDE + 1)
    listed = load_folder_data(root, in_memory=False)
    assert decode_into_memory(listed) is listed
    small = load_folder_data(_class_folders(tmp_path / "small", {"a": 2, "b": 2}), in_memory=False)
    part = decode_into_memory(subset_data(small, torch.tensor([1, 2])))
    assert part.in_memory and part.labels.tolist() == [0, 1] and part.named_classes
    assert part.classes == ["a", "b"]


# --- 5. the test split of a data setting, 6. the small-image threshold ---------------------------------------

def test_load_test_split(tmp_path):
    assert BUILTIN_DATASETS == ("digits", "fashion-mnist")
    assert load_test_split("digits", None).name == "digits-test"
    folder = _class_folders(tmp_path / "test", {"a": 1, "b": 1})
    assert load_test_split(str(tmp_path / "train"), str(folder)).classes == ["a", "b"]
    assert load_test_split(str(folder), None) is None
    assert load_test_split("digits", str(folder)).source == str(folder)


def test_small_image_side_is_defined_once():
    assert datasets.SMALL_IMAGE_SIDE is images.SMALL_IMAGE_SIDE == folders.SMALL_IMAGE_SIDE == 64


# --- 7. array labels of the wrong shape --------------------------------------------------------------------

@pytest.mark.parametrize("labels, match", [
    (np.zeros((6, 2), np.int64) + [1, 0], r"shape \(6, 2\); expected one integer class index .* shape \(6,\); "
                                           r"these look one-hot: save labels.argmax\(axis=1\) instead"),
    (np.arange(12).reshape(6, 2), r"shape \(6, 2\); expected .*\(6,\)$"),
    (np.arange(5), r"has 5 entries for 6 images; expected"),
    (np.array([0, 1, 0.5, 1, 0, 1]), r"\(float64\) holds non-integer values such as 0.5"),
    (np.array([0, 1, np.nan, 1, 0, 1]), "non-integer values such as nan"),
    (np.array([0, -1, 0, 1, 0, 1]), r"negative values \(smallest -1\)"),
    (np.array(["cat"] * 6), "has dtype <U3"),
    (np.array([0, 1, 2, 3, 4, 2**40]), "values up to 1099511627776"),
    (np.int64(3), r"shape \(\)"),
])
def test_wrong_array_labels_are_one_clear_error(tmp_path, labels, match):
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((6, 4, 4, 3), np.uint8), labels=labels)
    with pytest.raises(ValueError, match=match) as info:
        load_image_data(str(path))
    assert _one_line(info).startswith(f"{path}: 'labels'")


def test_array_labels_squeezed_or_integral_floats_are_accepted(tmp_path):
    path = tmp_path / "data.npz"
    for labels in (np.array([[0], [2], [1], [2]]), np.array([0.0, 2.0, 1.0, 2.0], np.float32)):
        np.savez(path, images=np.zeros((4, 4, 4, 3), np.uint8), labels=labels)
        data = load_image_data(str(path))
        assert data.labels.tolist() == [0, 2, 1, 2] and data.labels.dtype == torch.int64 and data.num_classes == 3
    np.savez(path, images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match=f"cannot read array file {path}: .*allow_pickle"):
        load_image_data(str(path))


# --- symbolic links -------------------------------------------------------------------------------------

def test_symbolic_links_are_followed_and_broken_ones_named(tmp_path):
    elsewhere = _class_folders(tmp_path / "elsewhere", {"b": 2})
    root = _class_folders(tmp_path / "data", {"a": 2})
    (root / "b").symlink_to(elsewhere / "b", target_is_directory=True)
    (root / "a" / "linked.png").symlink_to(elsewhere / "b" / "0.png")
    data = load_image_data(str(root), progress=False)
    assert data.classes == ["a", "b"] and len(data) == 5 and data.labels.tolist() == [0, 0, 0, 1, 1]

    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadImageError) as info:
        load_image_data(str(root), progress=False)
    assert f"gone.png is a symbolic link to {tmp_path / 'nowhere.png'}, which does not exist" in _one_line(info)
    data = load_image_data(str(root), skip_bad_images=True, progress=False)
    assert len(data) == 5 and [os.path.basename(p) for p, _ in data.skipped] == ["gone.png"]


def test_class_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    """Tests run as root, which lists any folder: the refusal is simulated."""
    import pathlib

    root = _class_folders(tmp_path / "data", {"a": 1, "locked": 1})
    iterdir = pathlib.Path.iterdir

    def refusing(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied")
        return iterdir(self)

    monkeypatch.setattr(pathlib.Path, "iterdir", refusing)
    with pytest.raises(ValueError) as info:
        load_image_data(str(root), progress=False)
    assert _one_line(info) == (f"data folder {root / 'locked'} cannot be listed (permission denied); fix its "
                               "permissions or leave it out")
