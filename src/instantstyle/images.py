"""Reading the images a user gives (references, init images, masks): RGB, upright, or a one-line error."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError


def load_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open an image as RGB, or raise a one-line ``UserError`` (missing, empty, corrupt)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not an image")
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path}: the file is empty")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{what} {path}: not a readable image ({err})") from None
