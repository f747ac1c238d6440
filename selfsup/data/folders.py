"""Folders of image files: listing (ImageFolder layout or flat), the data set's image side from the
file headers, and decoding small images into memory."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from selfsup.data.image_data import ImageData, quoted
from selfsup.data.images import (
    IMAGE_EXTENSIONS,
    SMALL_IMAGE_SIDE,
    BadImageError,
    display_path,
    read_image_side,
    read_rgb_image,
    square_resize,
)

# dataset_image_side reads the headers of at most this many files, evenly spaced in the sorted file list.
SIDE_SAMPLE = 1024


def _list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (not its sub-folders), sorted. Symbolic links are followed; a broken
    one with an image extension is listed, so that reading it names it rather than it silently vanishing."""
    try:
        entries = list(folder.iterdir())
    except PermissionError:
        raise ValueError(f"data folder {display_path(folder)} cannot be listed (permission denied); "
                         "fix its permissions or leave it out") from None
    return sorted(p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS
                  and (p.is_file() or (p.is_symlink() and not p.exists())))


class FolderScan(NamedTuple):
    """The files of a data folder. ``labels`` and ``classes`` are None for a flat folder of images;
    ``empty_classes`` names the class sub-folders that hold no image (left out of ``classes``)."""

    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None
    empty_classes: list[str]


def scan_image_folder(folder: Path) -> FolderScan:
    """ImageFolder layout (one sub-folder of images per class, sorted by name) or a flat folder of
    unlabeled images. Hidden sub-folders are ignored; when no sub-folder holds images, the folder is flat.
    Class names are shown as :func:`display_path` does (non-UTF-8 bytes escaped).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: it holds no images, or a folder cannot be listed.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {display_path(folder)} does not exist")
    try:
        sub_folders = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except PermissionError:
        raise ValueError(f"data folder {display_path(folder)} cannot be listed (permission denied)") from None
    listed = [(d, _list_images(d)) for d in sub_folders]
    if any(files for _, files in listed):
        paths, labels, classes = [], [], []
        for class_dir, files in (item for item in listed if item[1]):
            labels += [len(classes)] * len(files)
            classes.append(display_path(class_dir.name))
            paths += files
        return FolderScan(paths, labels, classes, [display_path(d.name) for d, files in listed if not files])
    paths = _list_images(folder)
    if not paths:
        nested = [display_path(d.name) for d in sub_folders if any(child.is_dir() for child in d.iterdir())]
        hint = (f"; its sub-folder(s) {quoted(nested)} hold folders: give the folder whose sub-folders hold "
                "the images (one per class)") if nested else ""
        raise ValueError(f"data folder {display_path(folder)} has no images (looked for "
                         f"{', '.join(IMAGE_EXTENSIONS)} files in it and in its sub-folders){hint}")
    return FolderScan(paths, None, None, [])


def scan_folder(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """``(paths, labels, classes)`` of :func:`scan_image_folder`, for callers that do not report empty
    class folders; new code should call scan_image_folder or ``load_folder_data(folder, in_memory=False)``."""
    paths, labels, classes, _ = scan_image_folder(folder)
    return paths, labels, classes


def _evenly_spaced(paths: list[Path], count: int) -> list[Path]:
    if len(paths) <= count:
        return paths
    return [paths[i * len(paths) // count] for i in range(count)]


def dataset_image_side(paths: list[Path], skip_bad_images: bool = False) -> int:
    """The side of a data set's images: the median of ``max(width, height)`` over its files.

    The rule: the headers only are read (no pixel is decoded), of every file, or of ``SIDE_SAMPLE`` (1024)
    files evenly spaced in the list when there are more (a folder's list is sorted by class, then name,
    so every class is sampled); the median is the lower one (a side some image has). One 1 x 1 or
    8000 x 8000 file among many 32 px ones leaves it at 32; images of another size are resized to it
    when decoded (:func:`decode_into_memory` counts them).

    Raises:
        BadImageError: a sampled file is bad and ``skip_bad_images`` is False.
        ValueError: no sampled file could be read.
    """
    sample = _evenly_spaced(paths, SIDE_SAMPLE)
    sides, first_error = [], None
    for path in sample:
        try:
            sides.append(read_image_side(path))
        except BadImageError as error:
            if not skip_bad_images:
                raise
            first_error = first_error or error
    if not sides:
        raise ValueError(f"none of the {len(sample)} image files checked could be read ({first_error}); "
                         "check the data folder")
    return sorted(sides)[(len(sides) - 1) // 2]


def _decode_all(paths: list[Path], side: int, skip_bad_images: bool,
                progress: bool) -> tuple[torch.Tensor, list[int], list[tuple[str, str]], int]:
    """Decode ``paths`` at ``side`` x ``side``: (images, indices kept, skipped (path, reason), resized)."""
    def decode(path: Path) -> tuple[np.ndarray, bool] | str:
        try:
            image = read_rgb_image(path)
            return np.asarray(square_resize(image, side)), image.size != (side, side)
        except BadImageError as error:
            if not skip_bad_images:
                raise
            return str(error)

    images, kept, skipped, resized = [], [], [], 0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(decode, paths, chunksize=256)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(paths), desc="decoding images", unit="img", leave=False)
        for i, result in enumerate(results):
            if isinstance(result, str):
                skipped.append((str(paths[i]), result))
            else:
                images.append(result[0])
                resized += result[1]
                kept.append(i)
    if not images:
        raise ValueError(f"no usable image among {len(paths)} files ({len(skipped)} skipped as bad)")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), kept, skipped, resized


def _decode(data: ImageData, side: int, skip_bad_images: bool, progress: bool) -> ImageData:
    images, kept, skipped, resized = _decode_all(data.paths, side, skip_bad_images, progress)  # type: ignore
    notes = list(data.notes)
    if resized:
        notes.append(f"{data.source or data.name}: resized {resized} of {len(kept)} images to {side} px, the "
                     "data set's median side (short side scaled, then center-cropped)")
    return replace(data, images=images, paths=None, labels=data.labels[kept] if data.labels is not None else None,
                   skipped=[*data.skipped, *skipped], resized=data.resized + resized, notes=notes)


def decode_into_memory(data: ImageData, skip_bad_images: bool = False, progress: bool = False) -> ImageData:
    """``data`` decoded into memory at its side (:func:`dataset_image_side`) when that side is at most
    ``SMALL_IMAGE_SIDE`` (64); ``data`` itself when it is in memory already or its images are larger.

    Labels follow the images kept; bad files skipped (``skip_bad_images``) are added to ``skipped``;
    images of another size are resized to the side, counted in ``resized`` and told in ``notes``.

    Raises:
        BadImageError: a file is bad and ``skip_bad_images`` is False.
        ValueError: no file could be decoded.
    """
    if data.in_memory or not data.paths:
        return data
    side = dataset_image_side(data.paths, skip_bad_images)
    if side > SMALL_IMAGE_SIDE:
        return data
    return _decode(data, side, skip_bad_images, progress)


def load_folder_data(folder: Path, skip_bad_images: bool = False, progress: bool = True,
                     in_memory: bool | None = None) -> ImageData:
    """A folder of images (:func:`scan_image_folder`), decoded into memory when its images are small
    (:func:`decode_into_memory`). ``in_memory`` True decodes whatever the side, False lists the files only
    (no file is opened)."""
    paths, labels, classes, empty = scan_image_folder(folder)
    source = display_path(folder)
    notes = [f"{source}: class folder(s) {quoted(empty)} have no images and are left out"] if empty else []
    data = ImageData(name=display_path(folder.name), paths=paths,
                     labels=torch.tensor(labels, dtype=torch.int64) if labels is not None else None,
                     classes=classes, named_classes=classes is not None, empty_classes=empty, source=source,
                     notes=notes)
    if in_memory is None:
        return decode_into_memory(data, skip_bad_images, progress)
    if in_memory:
        return _decode(data, dataset_image_side(paths, skip_bad_images), skip_bad_images, progress)
    return data
