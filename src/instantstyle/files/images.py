"""Reading the images a user gives (references, init images, masks): RGB, upright, or a one-line error.

Every image is held to a pixel cap read from its header before any pixel is decoded (``image_size``), so a
small file that inflates to gigabytes is refused before it costs memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from .textfiles import NOT_REGULAR

#: The most pixels an input image may have by default (about 8k x 5k; 160 MB decoded as RGBA).
MAX_PIXELS = 40_000_000
#: The highest cap one may set: PIL refuses larger images as decompression bombs whatever the cap.
PIL_PIXEL_LIMIT = 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)
#: The lowest cap one may set (a 64 x 64 image, the smallest size a model makes).
MIN_PIXEL_CAP = 64 * 64


def check_pixel_cap(max_pixels: int | None) -> None:
    """A pixel cap is a whole number from ``MIN_PIXEL_CAP`` to ``PIL_PIXEL_LIMIT`` (``None``: PIL's limit only)."""
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int):
        raise UserError(f"the pixel cap must be a whole number, got {max_pixels!r}")
    if not MIN_PIXEL_CAP <= max_pixels <= PIL_PIXEL_LIMIT:
        raise UserError(f"the pixel cap must be between {MIN_PIXEL_CAP:,} and {PIL_PIXEL_LIMIT:,} "
                        f"(PIL's decompression-bomb limit), got {max_pixels:,}")


def image_size(source: str | Path | IO[bytes], what: str = "image", max_pixels: int | None = MAX_PIXELS,
               name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file from its header alone, or a one-line ``UserError``: not an image, over
    ``max_pixels``, or past PIL's decompression-bomb limit. ``name``: how the message calls the file (default:
    its path)."""
    name = name or str(source if isinstance(source, (str, Path)) else "upload")
    try:
        with warnings.catch_warnings():  # the cap is checked here; PIL's warning below its hard limit is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
    except Image.DecompressionBombError as err:
        raise UserError(f"{what} {name}: refused as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{what} {name}: not a readable image ({err})") from None
    if max_pixels is not None and width * height > max_pixels:
        raise UserError(f"{what} {name}: {width}x{height} is over the limit of {max_pixels:,} pixels")
    return width, height


def load_image(path: str | Path, what: str = "image", max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, or raise a one-line ``UserError`` (missing, empty, corrupt, over ``max_pixels``
    pixels by its header, or past PIL's decompression-bomb limit)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not an image")
    if not path.is_file():
        raise UserError(f"{what} {path}: " + (NOT_REGULAR if path.exists() else "no such file"))
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path}: the file is empty")
    image_size(path, what, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError as err:
        raise UserError(f"{what} {path}: refused as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{what} {path}: not a readable image ({err})") from None


def thumbnail(path: str | Path, side: int, what: str = "image", max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """An image's centre square (what the encoder sees by default) scaled to ``side`` pixels, for previews; read
    within ``max_pixels`` as ``load_image`` reads it (JPEGs decode at a reduced size first)."""
    path = Path(path)
    image_size(path, what, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a fraction of the size
                image.load()
                picture = ImageOps.exif_transpose(image).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise UserError(f"{what} {path}: not a readable image ({err})") from None
    return ImageOps.fit(picture, (side, side), Image.Resampling.LANCZOS)
