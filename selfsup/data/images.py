"""Reading one image file into an RGB PIL image, with errors that name the file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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


def read_rgb_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as RGB (greyscale, palette, RGBA and 16-bit images converted).

    Raises:
        BadImageError: the file is missing, empty, unreadable, not an image, truncated or corrupt.
    """
    path = Path(path)
    shown = display_path(path)
    hint = "remove or replace it, or pass --skip-bad-images to skip such files"
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"image file {shown} is empty (0 bytes); {hint}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated file fails here, not later in a worker
                image = opened
                if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                    return _sixteen_bit_to_rgb(image)
                if image.mode == "P" and "transparency" in image.info:
                    image = image.convert("RGBA")
                return image.convert("RGB")
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"image file {shown} does not exist") from None
    except PermissionError:
        raise BadImageError(f"image file {shown} cannot be read (permission denied); {hint}") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{shown} is not an image file PIL can read; {hint}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"image file {shown} is too large to decode safely ({error}); {hint}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"image file {shown} is truncated or corrupt ({error}); {hint}") from None


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
