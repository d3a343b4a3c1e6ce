"""Sweeps: one request varied over blocks x scale (x content scale), rendered as a labelled contact sheet.

The right blocks and scale differ per reference image, and style is judged by eye, so a sweep
renders every combination with the same seed and lays the results out in one grid: one row per
blocks spec (and content scale), one column per scale. Every cell is an ordinary ``Request``; the
style embedding is encoded once for the whole sheet (``StylePipeline`` caches it by image content).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from .atomic import save_png_atomically
from .errors import UserError
from .request import Request, write_png

if TYPE_CHECKING:
    from .pipeline import StylePipeline

SHEET_KEY = "instantstyle-sweep"
#: Cells smaller than this are enlarged (nearest neighbour, pixels kept exact) so labels stay legible.
MIN_CELL = 192
MAX_CELLS = 100
FONT_SIZE = 18
PAD = 8


#: The rows of a sweep that names no blocks: these presets, as far as the model's family has them (SD3/FLUX: all).
DEFAULT_ROWS = ("style", "style+layout", "all")


def default_rows(presets: Sequence[str]) -> tuple[str, ...]:
    """A sweep's rows without blocks given: ``DEFAULT_ROWS`` the family has (``presets``: its preset names)."""
    return tuple(name for name in DEFAULT_ROWS if name in presets)


@dataclass(frozen=True)
class Axes:
    """What a sweep varies: blocks specs (rows), scales (columns) and optional content scales (rows)."""

    blocks: tuple[str, ...]
    scales: tuple[float, ...]
    content_scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.blocks:
            raise UserError("a sweep needs at least one blocks spec")
        if not self.scales:
            raise UserError("a sweep needs at least one scale")
        if len(self.rows) * len(self.scales) > MAX_CELLS:
            raise UserError(f"a sweep of {len(self.rows)} x {len(self.scales)} cells is over the limit of {MAX_CELLS}")

    @property
    def rows(self) -> list[tuple[str, float | None]]:
        """(blocks, content scale or None) for every row, blocks outermost."""
        contents: Sequence[float | None] = self.content_scales or (None,)
        return [(blocks, c) for blocks in self.blocks for c in contents]

    def row_label(self, blocks: str, content_scale: float | None) -> str:
        return blocks if content_scale is None else f"{blocks} | content {_num(content_scale)}"

    def column_label(self, scale: float) -> str:
        return f"scale {_num(scale)}"


def _num(value: float) -> str:
    return f"{value:g}"


def parse_blocks_list(values: str | Sequence[str]) -> tuple[str, ...]:
    """Blocks specs to sweep: ``style,style+layout,all``; separate with ``;`` when a spec itself has
    commas (``up_blocks.0.attentions.1=1,layout=0.5;style``). Several values (a repeated flag) add up."""
    items: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        sep = ";" if ";" in value else ","
        for part in value.split(sep):
            if not part.strip():
                raise UserError(f"empty entry in blocks list {value!r}")
            items.append(part.strip())
    return tuple(dict.fromkeys(items))


def parse_number_list(name: str, value: str) -> tuple[float, ...]:
    """``0.4,0.7,1.0`` into numbers (at least 0), or a one-line ``UserError`` naming the bad entry."""
    numbers = []
    for part in value.split(","):
        part = part.strip()
        try:
            number = float(part)
        except ValueError:
            raise UserError(f"{name} {part!r} in {value!r} is not a number") from None
        if not number >= 0 or number == float("inf"):
            raise UserError(f"{name} must be a number of at least 0, got {part!r}")
        numbers.append(number)
    return tuple(dict.fromkeys(numbers))


def sweep_requests(base: Request, axes: Axes) -> list[list[Request]]:
    """The grid of requests (rows x columns): ``base`` with blocks, scale and content scale set, one image each."""
    if base.seed is None:
        raise UserError("a sweep needs a fixed seed (complete the request first)")
    grid = []
    for blocks, content_scale in axes.rows:
        row = []
        for scale in axes.scales:
            changes: dict[str, object] = {"blocks": blocks, "scale": scale, "num_images": 1}
            if content_scale is not None:
                changes["content_scale"] = content_scale
            row.append(base.replace(**changes))
        grid.append(row)
    return grid


def cell_name(stem: str, request: Request, axes: Axes) -> str:
    """File name of one cell: ``sheet-style-s0.7.png`` (with ``-c0.5`` when content scales vary)."""
    slug = re.sub(r"[^A-Za-z0-9+.]+", "_", request.blocks or "default").strip("_")
    name = f"{stem}-{slug}-s{_num(request.scale)}"
    if axes.content_scales:
        name += f"-c{_num(request.content_scale)}"
    return name + ".png"


def run_sweep(
    pipe: StylePipeline,
    base: Request,
    axes: Axes,
    on_cell: Callable[[int, int, Request, Image.Image], None] | None = None,
) -> tuple[list[list[Image.Image]], list[list[Request]]]:
    """Render every cell with ``pipe`` (a ``StylePipeline``); ``on_cell`` sees each as it finishes
    (to save it at once, so finished work survives a failure later in the sheet)."""
    base = pipe.complete(base)
    grid = sweep_requests(base, axes)
    images: list[list[Image.Image]] = []
    done: list[list[Request]] = []
    for r, row in enumerate(grid):
        images.append([])
        done.append([])
        for c, request in enumerate(row):
            result = pipe(request)
            image, request = result.images[0], result.request
            images[r].append(image)
            done[r].append(request)
            if on_cell is not None:
                on_cell(r, c, request, image)
    return images, done


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a contact sheet (pixels): header sizes, cell size and enlargement."""

    title_h: int
    head_h: int
    label_w: int
    col_w: int
    cell_w: int
    cell_h: int
    factor: int
    size: tuple[int, int]

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of one enlarged cell."""
        left = self.label_w + column * self.col_w + (self.col_w - self.cell_w) // 2
        top = self.title_h + self.head_h + row * (self.cell_h + PAD)
        return left, top, left + self.cell_w, top + self.cell_h

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        top = self.title_h + self.head_h + row * (self.cell_h + PAD)
        return 0, top, self.label_w, top + self.cell_h

    def column_label_box(self, column: int) -> tuple[int, int, int, int]:
        left = self.label_w + column * self.col_w
        return left, self.title_h, left + self.col_w, self.title_h + self.head_h


def sheet_layout(
    cell_size: tuple[int, int], row_labels: Sequence[str], column_labels: Sequence[str], title: str = ""
) -> SheetLayout:
    """Size the sheet so every label fits; small cells are enlarged by a whole factor to ``MIN_CELL``."""
    factor = max(1, -(-MIN_CELL // min(cell_size)))
    cell_w, cell_h = cell_size[0] * factor, cell_size[1] * factor
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(_text_size(probe, t, font)[1] for t in ["Ag", *row_labels, *column_labels])
    label_w = max(_text_size(probe, t, font)[0] for t in row_labels) + 2 * PAD
    col_w = max(cell_w + PAD, *(_text_size(probe, t, font)[0] + 2 * PAD for t in column_labels))
    title_h = line_h + 2 * PAD if title else 0
    head_h = line_h + 2 * PAD
    title_w = _text_size(probe, title, font)[0] + 2 * PAD if title else 0
    width = max(label_w + col_w * len(column_labels) + PAD, title_w)
    height = title_h + head_h + (cell_h + PAD) * len(row_labels)
    return SheetLayout(title_h, head_h, label_w, col_w, cell_w, cell_h, factor, (width, height))


def contact_sheet(
    images: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
) -> Image.Image:
    """A white grid with a title line, column headers on top and row headers on the left."""
    if len(images) != len(row_labels) or any(len(row) != len(column_labels) for row in images):
        raise ValueError("labels do not match the grid")
    cell_size = max(im.width for row in images for im in row), max(im.height for row in images for im in row)
    layout = sheet_layout(cell_size, row_labels, column_labels, title)
    font = _font()
    sheet = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=font)
    for c, text in enumerate(column_labels):
        left, top, right, _ = layout.column_label_box(c)
        draw.text((left + (right - left - _text_size(draw, text, font)[0]) // 2, top + PAD), text, fill="black",
                  font=font)
    for r, text in enumerate(row_labels):
        _, top, _, bottom = layout.row_label_box(r)
        draw.text((PAD, (top + bottom - _text_size(draw, text, font)[1]) // 2), text, fill="black", font=font)
        for c, image in enumerate(images[r]):
            size = image.width * layout.factor, image.height * layout.factor
            sheet.paste(image.convert("RGB").resize(size, Image.Resampling.NEAREST), layout.cell_box(r, c)[:2])
    return sheet


def save_sheet(sheet: Image.Image, path: str | Path, base: Request, axes: Axes) -> Path:
    """Write the sheet PNG atomically, with the sweep (base request and axes) in a text chunk."""
    sweep = {"base": base.to_dict(), "blocks": axes.blocks, "scales": axes.scales,
             "content_scales": axes.content_scales}
    return save_png_atomically(sheet, path, {SHEET_KEY: json.dumps(sweep, sort_keys=True)})


def render_sweep(
    pipe: StylePipeline,
    base: Request,
    axes: Axes,
    output: str | Path,
    on_cell: Callable[[Path], None] | None = None,
    title: str | None = None,
) -> tuple[Path, list[list[Path]]]:
    """Run a sweep and write its cells (``write_png``, each as soon as it is made) and the labelled sheet
    (titled with the shared settings unless ``title`` is given)."""
    output = Path(output)
    paths: list[list[Path]] = [[] for _ in axes.rows]

    def save(r: int, c: int, request: Request, image: Image.Image) -> None:
        path = write_png(image, output.with_name(cell_name(output.stem, request, axes)), request)
        paths[r].append(path)
        if on_cell is not None:
            on_cell(path)

    images, done = run_sweep(pipe, base, axes, save)
    first = done[0][0]
    title = title or f"seed {first.seed}, {first.steps} steps, {first.width}x{first.height}: {first.prompt}"[:120]
    sheet = contact_sheet(images, [axes.row_label(b, c) for b, c in axes.rows],
                          [axes.column_label(s) for s in axes.scales], title)
    return save_sheet(sheet, output, first, axes), paths

