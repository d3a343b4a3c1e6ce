"""Make the example style images (our own procedural art, no third-party images).

    python examples/make_examples.py   # writes examples/mosaic.png and examples/ink-waves.png
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).parent


def mosaic(size: int = 512, cells: int = 90, seed: int = 3) -> Image.Image:
    """Stained-glass tiles: Voronoi cells in a warm palette with dark leading between them."""
    rng = np.random.default_rng(seed)
    palette = np.array([[231, 111, 81], [244, 162, 97], [233, 196, 106], [42, 157, 143], [38, 70, 83], [200, 85, 61]])
    points = rng.uniform(0, size, (cells, 2))
    colours = palette[rng.integers(0, len(palette), cells)] + rng.integers(-18, 18, (cells, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (xx[..., None] - points[:, 0]) ** 2 + (yy[..., None] - points[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    gap = np.sqrt(np.take_along_axis(d, second[..., None], -1)[..., 0]) - np.sqrt(
        np.take_along_axis(d, nearest[..., None], -1)[..., 0]
    )
    image = colours[nearest].astype(float) * (0.85 + 0.15 * rng.random((size, size, 1)))
    image[gap < 3.0] = [25, 22, 20]
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


def ink_waves(size: int = 512, seed: int = 5) -> Image.Image:
    """Woodblock-print waves: indigo bands on paper, with fine ink lines following the crests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = sum(a * np.sin(2 * np.pi * (f * xx + p)) for a, f, p in rng.uniform([0.02, 1, 0], [0.06, 4, 1], (4, 3)))
    bands = (yy + phase) * 9
    frac = bands - np.floor(bands)
    paper = np.array([240, 228, 203], float)
    indigo = np.array([34, 58, 112], float)
    light = np.array([108, 148, 190], float)
    shade = np.where(frac < 0.5, 0.0, 1.0)[..., None]
    image = paper * (1 - shade) + (indigo * (1 - frac[..., None]) + light * frac[..., None]) * shade
    image[np.abs(frac - 0.5) < 0.03] = [20, 24, 40]
    image *= 0.93 + 0.07 * rng.random((size, size, 1))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


if __name__ == "__main__":
    mosaic().save(HERE / "mosaic.png", optimize=True)
    ink_waves().save(HERE / "ink-waves.png", optimize=True)
