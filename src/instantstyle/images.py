"""Reading the images a user gives (references, init images, masks): RGB, upright, or a one-line error."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

#: The most pixels an input image may have (about 8k x 5k; 160 MB decoded as RGBA), read from its header before
#: any pixel is decoded. PIL's own decompression-bomb limit (about 179 MP) still applies above it.
MAX_PIXELS = 40_000_000


def load_image(path: str | Path, what: str = "image", max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, or raise a one-line ``UserError`` (missing, empty, corrupt, over ``max_pixels``
    pixels by its header, or past PIL's decompression-bomb limit)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not an image")
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path}: the file is empty")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise UserError(f"{what} {path}: {width}x{height} is over the limit of {max_pixels:,} pixels")
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except UserError:
        raise
    except Image.DecompressionBombError as err:
        raise UserError(f"{what} {path}: refused as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{what} {path}: not a readable image ({err})") from None
