"""Reading one image file into an upright RGB PIL image, or its size from the header, with errors that
name the file."""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Images up to this side are decoded once into memory and augmented in batches on the device; the view
# recipes leave out the Gaussian blur at or below it (SimCLR's CIFAR-10 setting, Chen et al. 2020, B.9).
# Defined once, here (selfsup.data.datasets re-exports it); the view recipes import it too.
SMALL_IMAGE_SIDE = 64
_HINT = "remove or replace it, or pass --skip-bad-images to skip such files"


class BadImageError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit values at 255 instead of scaling them: scale by the type's range.
    array = np.asarray(image)
    if array.dtype.kind in "iu" and array.dtype.itemsize >= 2:
        maximum = 65535 if image.mode.startswith("I;16") else max(int(array.max()), 1)
        array = (array.astype(np.float64) * (255.0 / maximum)).clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes of a file name that are not UTF-8 (Linux allows any) become
    ``\\xNN`` escapes, so that messages naming the file can be printed and logged anywhere."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@contextmanager
def _errors_naming(path: Path) -> Iterator[None]:
    """Turn what PIL and the file system raise while reading ``path`` into a BadImageError naming it."""
    shown = display_path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"image file {shown} is empty (0 bytes); {_HINT}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadImageError:
        raise
    except FileNotFoundError:
        if path.is_symlink():
            target = display_path(os.readlink(path))
            raise BadImageError(f"image file {shown} is a symbolic link to {target}, which does not exist; "
                                f"{_HINT}") from None
        raise BadImageError(f"image file {shown} does not exist") from None
    except PermissionError:
        raise BadImageError(f"image file {shown} cannot be read (permission denied); {_HINT}") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{shown} is not an image file PIL can read; {_HINT}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"image file {shown} is too large to decode safely ({error}); {_HINT}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"image file {shown} is truncated or corrupt ({error}); {_HINT}") from None


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate or flip ``image`` (loaded) in place as its EXIF Orientation tag says, as photo viewers do:
    a phone photo stored sideways with Orientation 6 comes out upright. Works for every mode (16-bit and
    palette images keep their mode and transparency for the conversion that follows)."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        pass  # a malformed EXIF block: use the pixels as stored, as viewers do


def read_rgb_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as RGB (greyscale, palette, RGBA and 16-bit images converted),
    upright: the EXIF Orientation tag (JPEG, PNG, WebP, TIFF) is applied, so width and height swap for
    orientations 5 to 8.

    Raises:
        BadImageError: the file is missing (or a broken symbolic link), empty, unreadable, not an image,
            truncated or corrupt, or too large to decode safely.
    """
    path = Path(path)
    with _errors_naming(path), Image.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, not later in a worker
        _apply_exif_orientation(opened)
        image = opened
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            return _sixteen_bit_to_rgb(image)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")


def read_image_side(path: str | Path) -> int:
    """``max(width, height)`` of the image ``path`` from its header, without decoding the pixels.

    The EXIF orientation is not read (for a PNG, PIL would decode the file to look for it): it swaps
    width and height, which leaves their maximum unchanged.

    Raises:
        BadImageError: as :func:`read_rgb_image`, for what the header shows (a truncated file passes).
    """
    path = Path(path)
    with _errors_naming(path), Image.open(path) as opened:
        return max(opened.size)


def square_resize(image: Image.Image, side: int) -> Image.Image:
    """Resize the short side to ``side`` and center-crop to ``side`` x ``side``."""
    width, height = image.size
    if (width, height) == (side, side):
        return image
    scale = side / min(width, height)
    resized = image.resize((max(side, round(width * scale)), max(side, round(height * scale))),
                           Image.Resampling.BICUBIC)
    left = (resized.width - side) // 2
    top = (resized.height - side) // 2
    return resized.crop((left, top, left + side, top + side))
