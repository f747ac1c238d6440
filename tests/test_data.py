import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.datasets import load_image_data, scan_folder
from selfsup.data.images import BadImageError, read_rgb_image
from selfsup.data.loading import InMemoryViewBatches, derived_seed, rank_batches


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_modes_become_rgb(tmp_path):
    grey = _save(tmp_path / "grey.png", np.full((5, 7), 100, np.uint8))
    rgba = _save(tmp_path / "rgba.png", np.full((5, 7, 4), 50, np.uint8))
    palette = tmp_path / "palette.png"
    palette_image = Image.new("P", (7, 5), 0)
    palette_image.putpalette([200, 200, 200] + [0, 0, 0] * 255)
    palette_image.save(palette)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.full((5, 7), 65535, np.uint16)).save(sixteen)
    for path, value in ((grey, 100), (rgba, 50), (palette, 200), (sixteen, 255)):
        image = read_rgb_image(path)
        assert image.mode == "RGB" and image.size == (7, 5)
        assert np.asarray(image)[0, 0, 0] == value, path.name


@pytest.mark.parametrize("content, match", [
    (b"", "empty"), (b"this is not an image", "not an image"),
])
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=match) as info:
        read_rgb_image(path)
    assert "bad.jpg" in str(info.value)


def test_truncated_jpeg_and_missing_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(BadImageError, match="truncated.jpg"):
        read_rgb_image(truncated)
    with pytest.raises(BadImageError, match="does not exist"):
        read_rgb_image(tmp_path / "nope.png")


def test_image_folder_and_flat_folder(tmp_path):
    for label in ("cat", "dog"):
        for i in range(3):
            _save(tmp_path / "labelled" / label / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    paths, labels, classes = scan_folder(tmp_path / "labelled")
    assert classes == ["cat", "dog"] and labels == [0, 0, 0, 1, 1, 1] and len(paths) == 6
    for i in range(4):
        _save(tmp_path / "flat" / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    data = load_image_data(str(tmp_path / "flat"), progress=False)
    assert data.labels is None and data.in_memory and data.images.shape == (4, 3, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_data(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        load_image_data(str(tmp_path / "missing"))


def test_bad_image_in_folder_is_named_or_skipped(tmp_path):
    for i in range(3):
        _save(tmp_path / "a" / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(BadImageError, match="broken.png"):
        load_image_data(str(tmp_path), progress=False)
    data = load_image_data(str(tmp_path), skip_bad_images=True, progress=False)
    assert len(data) == 3 and len(data.skipped) == 1 and "broken.png" in data.skipped[0][0]


def test_array_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (10, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=np.arange(10) % 2)
    data = load_image_data(str(tmp_path / "data.npz"))
    assert data.images.shape == (10, 3, 12, 12) and data.num_classes == 2
    assert torch.equal(data.images[3].permute(1, 2, 0), torch.from_numpy(images[3]))
    np.save(tmp_path / "grey.npy", images[..., 0])
    assert load_image_data(str(tmp_path / "grey.npy")).images.shape == (10, 3, 12, 12)
    np.save(tmp_path / "floats.npy", images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_image_data(str(tmp_path / "floats.npy"))


def test_builtin_digits_split_is_fixed_and_disjoint():
    train, test = load_image_data("digits", "train"), load_image_data("digits", "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (3, 8, 8)
    assert train.images.max() == 255 and train.num_classes == 10
    assert torch.equal(load_image_data("digits", "train").images, train.images)


def test_builtin_fashion_mnist():
    try:
        test = load_image_data("fashion-mnist", "test")
    except FileNotFoundError as error:
        import os

        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(str(error))
    assert test.images.shape == (10000, 3, 28, 28) and test.num_classes == 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_rank_batches_partition_the_epoch_and_change_with_it():
    single = rank_batches(100, 20, seed=1, epoch=0, rank=0, world=1)
    halves = [rank_batches(100, 20, seed=1, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(single) == 5
    for step in range(5):
        assert torch.equal(torch.cat([halves[0][step], halves[1][step]]), single[step])
    everything = torch.cat(single)
    assert len(set(everything.tolist())) == 100
    assert not torch.equal(everything, torch.cat(rank_batches(100, 20, seed=1, epoch=1, rank=0, world=1)))
    with pytest.raises(ValueError, match="divisible"):
        rank_batches(100, 21, 0, 0, 0, 2)
    assert derived_seed(1, 2, 3) != derived_seed(1, 3, 2)


def test_in_memory_batches_replay_from_any_batch():
    data = load_image_data("digits", "test")
    from selfsup.transforms.batched import BatchedViews, BatchedViewAugment
    from selfsup.transforms.views import ViewConfig

    two_views = BatchedViews(BatchedViewAugment(ViewConfig(crop_size=16)))
    batches = InMemoryViewBatches(data, two_views, 32, seed=0, device=torch.device("cpu"))
    full = list(batches.epoch(2))
    resumed = list(batches.epoch(2, start_batch=3))
    assert len(full) == len(batches) == len(data) // 32
    for (a1, a2, la), (b1, b2, lb) in zip(full[3:], resumed):
        assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(la, lb)
    with pytest.raises(ValueError, match="larger than the data set"):
        InMemoryViewBatches(data, two_views, 10_000, seed=0, device=torch.device("cpu"))
