"""Text on images drawn with PIL, shared by the sweep's contact sheets and the score plots."""

from __future__ import annotations

from PIL import ImageDraw, ImageFont

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def font(size: int) -> Font:
    """PIL's default font at ``size`` px (the small bitmap font when Pillow has no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    """(width, height) of ``text`` as ``draw`` would draw it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)
