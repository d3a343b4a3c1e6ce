"""Sweeps: one request varied over blocks x scale (x content scale), rendered as a labelled contact sheet.

The right blocks and scale differ per reference image, so a sweep renders every combination with the
same seed and lays the results out in one grid: one row per blocks spec (and content scale), one column
per scale. Every cell is an ordinary ``Request``; the style embedding is encoded once for the whole sheet
(``StylePipeline`` caches it by image content). With a ``Scorer``, every cell is scored (its caption on
the sheet, its PNG), and the sweep writes a scatter plot of style against prompt score with the Pareto
front (``SHEET-plot.png``) and a CSV of every cell's settings and scores (``SHEET.csv``); with a style
floor it picks a cell (``pareto.pick``) and frames it on the sheet.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from ..core.plan import complete
from ..core.preflight import Checked, ModelInfo, check
from ..core.request import Request, write_png
from ..errors import UserError
from ..files.atomic import save_png_atomically, write_text_atomically
from ..loading.runtime import Runtime
from ..scores.drawing import font as load_font
from ..scores.drawing import text_size
from ..scores.pareto import (
    Cell,
    cell_points,
    cells_csv,
    content_kept,
    pareto_front,
    pick,
    style_key,
    style_threshold,
)
from ..scores.plots import save_plot, scatter_plot
from ..scores.scorer import SCORE_TITLES, Scorer, Scores

if TYPE_CHECKING:
    from ..core.pipeline import StylePipeline

SHEET_KEY = "instantstyle-sweep"
#: Cells smaller than this are enlarged (nearest neighbour, pixels kept exact) so labels stay legible.
MIN_CELL = 192
MAX_CELLS = 100
FONT_SIZE = 18
CAPTION_FONT_SIZE = 14
PAD = 8
PICK_COLOR = (200, 30, 30)


#: The rows of a sweep that names no blocks: these presets, as far as the model's family has them (SD3/FLUX: all).
DEFAULT_ROWS = ("style", "style+layout", "all")


def default_rows(presets: Sequence[str]) -> tuple[str, ...]:
    """A sweep's rows without blocks given: ``DEFAULT_ROWS`` the family has (``presets``: its preset names)."""
    return tuple(name for name in DEFAULT_ROWS if name in presets)


#: The request fields a sweep's content axis can vary: InstantStyle's content subtraction, CSGO's content tokens.
CONTENT_FIELDS = {"content_scale": "content", "content_adapter_scale": "content tokens"}


@dataclass(frozen=True)
class Axes:
    """What a sweep varies: blocks specs (rows; ``None``: the adapter's own, CSGO's trained blocks), scales
    (columns), and optional content scales of ``content_field`` (``CONTENT_FIELDS``) and restyled photos' content
    scales (rows)."""

    blocks: tuple[str | None, ...]
    scales: tuple[float, ...]
    content_scales: tuple[float, ...] = ()
    restyle_content_scales: tuple[float, ...] = ()
    content_field: str = "content_scale"

    def __post_init__(self) -> None:
        if not self.blocks:
            raise UserError("a sweep needs at least one blocks spec")
        if not self.scales:
            raise UserError("a sweep needs at least one scale")
        if len(self.rows) * len(self.scales) > MAX_CELLS:
            raise UserError(f"a sweep of {len(self.rows)} x {len(self.scales)} cells is over the limit of {MAX_CELLS}")
        if self.content_field not in CONTENT_FIELDS:
            raise ValueError(f"a sweep's content axis is one of {', '.join(CONTENT_FIELDS)}")

    @property
    def rows(self) -> list[tuple[str | None, float | None, float | None]]:
        """(blocks, content scale or None, restyle content scale or None) for every row, blocks outermost."""
        contents: Sequence[float | None] = self.content_scales or (None,)
        photo: Sequence[float | None] = self.restyle_content_scales or (None,)
        return [(blocks, c, r) for blocks in self.blocks for c in contents for r in photo]

    def row_label(self, blocks: str | None, content_scale: float | None,
                  restyle_content_scale: float | None = None) -> str:
        content = None if content_scale is None else f"{CONTENT_FIELDS[self.content_field]} {_num(content_scale)}"
        photo = None if restyle_content_scale is None else f"photo {_num(restyle_content_scale)}"
        return " | ".join(part for part in (blocks, content, photo) if part is not None) or "the adapter's blocks"

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


def check_sweep(base: Request, axes: Axes, runtime: Runtime, model: ModelInfo | str) -> Checked:
    """Every surface's checks of a sweep, before it renders: restyle content scales need a photo, content scales a
    content to subtract; then the base request's one ``check``, against the model, with every row's blocks spec."""
    if axes.restyle_content_scales and base.restyle is None:
        raise UserError("--restyle-content-scale values need --restyle PHOTO")
    if axes.content_scales and axes.content_field == "content_scale" and base.content_prompt is None \
            and base.content_image is None:
        raise UserError("content scales need --content-prompt or --content-image (in the web UI: a content prompt "
                        "or image), the content to subtract")
    return check(base, runtime, model, specs=axes.blocks)


def sweep_requests(base: Request, axes: Axes) -> list[list[Request]]:
    """The grid of requests (rows x columns): ``base`` with blocks, scale and content scale set, one image each."""
    if base.seed is None:
        raise UserError("a sweep needs a fixed seed (complete the request first)")
    grid = []
    for blocks, content_scale, restyle_content_scale in axes.rows:
        row = []
        for scale in axes.scales:
            changes: dict[str, object] = {"blocks": blocks, "scale": scale, "num_images": 1}
            if content_scale is not None:
                changes[axes.content_field] = content_scale
            if restyle_content_scale is not None:
                changes["restyle_content_scale"] = restyle_content_scale
            row.append(base.replace(**changes))
        grid.append(row)
    return grid


#: The longest blocks spec a cell's file name spells out; a longer one (a 324-character per-block spec made a name
#: past the file system's 255 bytes) is the row number and a hash of the spec. The PNG holds the full spec.
MAX_SLUG = 100


def cell_name(stem: str, axes: Axes, row: int, column: int) -> str:
    """File name of one cell: ``sheet-style-s0.7.png`` (with ``-c0.5`` when content scales vary), from the row's
    blocks spec as given (``@FILE:NAME`` included), or ``sheet-r2-1a2b3c4d-s0.7.png`` for a long spec, and the
    column's scale."""
    blocks, content_scale, restyle_content_scale = axes.rows[row]
    slug = re.sub(r"[^A-Za-z0-9+.]+", "_", blocks).strip("_") if blocks is not None else "own"
    if blocks is not None and len(slug) > MAX_SLUG:
        slug = f"r{row + 1}-{hashlib.sha256(blocks.encode()).hexdigest()[:8]}"
    name = f"{stem}-{slug}-s{_num(axes.scales[column])}"
    if content_scale is not None:
        name += f"-c{_num(content_scale)}"
    if restyle_content_scale is not None:
        name += f"-p{_num(restyle_content_scale)}"
    return name + ".png"


def plot_path(sheet: Path) -> Path:
    """Where the scatter plot of a scored sweep goes: ``SHEET-plot.png``."""
    return sheet.with_name(f"{sheet.stem}-plot.png")


def csv_path(sheet: Path) -> Path:
    """Where the table of a scored sweep goes: ``SHEET.csv``."""
    return sheet.with_suffix(".csv")


def run_sweep(
    pipe: StylePipeline,
    base: Request,
    axes: Axes,
    on_cell: Callable[[int, int, Request, Image.Image], None] | None = None,
    progress: bool = False,
) -> tuple[list[list[Image.Image]], list[list[Request]]]:
    """Render every cell with ``pipe`` (a ``StylePipeline``); ``on_cell`` sees each as it finishes
    (to save it at once, so finished work survives a failure later in the sheet); ``progress`` shows each cell's
    denoising progress bar on stderr, as ``generate`` does."""
    base = complete(base, pipe.resources)
    grid = sweep_requests(base, axes)
    images: list[list[Image.Image]] = []
    done: list[list[Request]] = []
    for r, row in enumerate(grid):
        images.append([])
        done.append([])
        for c, request in enumerate(row):
            result = pipe(request, progress=progress)
            image, request = result.images[0], result.request
            images[r].append(image)
            done[r].append(request)
            if on_cell is not None:
                on_cell(r, c, request, image)
    return images, done


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a contact sheet (pixels): header sizes, cell size and enlargement, and the
    caption lines under each cell (none without scores)."""

    title_h: int
    head_h: int
    label_w: int
    col_w: int
    cell_w: int
    cell_h: int
    factor: int
    size: tuple[int, int]
    caption_h: int = 0

    @property
    def row_h(self) -> int:
        return self.cell_h + self.caption_h + PAD

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of one enlarged cell."""
        left = self.label_w + column * self.col_w + (self.col_w - self.cell_w) // 2
        top = self.title_h + self.head_h + row * self.row_h
        return left, top, left + self.cell_w, top + self.cell_h

    def caption_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the caption under one cell, as wide as its column."""
        left = self.label_w + column * self.col_w
        top = self.cell_box(row, column)[3]
        return left, top, left + self.col_w, top + self.caption_h

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        top = self.title_h + self.head_h + row * self.row_h
        return 0, top, self.label_w, top + self.cell_h

    def column_label_box(self, column: int) -> tuple[int, int, int, int]:
        left = self.label_w + column * self.col_w
        return left, self.title_h, left + self.col_w, self.title_h + self.head_h


def sheet_layout(
    cell_size: tuple[int, int], row_labels: Sequence[str], column_labels: Sequence[str], title: str = "",
    captions: Sequence[Sequence[str]] = (),
) -> SheetLayout:
    """Size the sheet so every label fits; small cells are enlarged by a whole factor to ``MIN_CELL``.
    ``captions``: the caption lines of every cell (any order), each column wide enough for them."""
    factor = max(1, -(-MIN_CELL // min(cell_size)))
    cell_w, cell_h = cell_size[0] * factor, cell_size[1] * factor
    font, small = load_font(FONT_SIZE), load_font(CAPTION_FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(text_size(probe, t, font)[1] for t in ["Ag", *row_labels, *column_labels])
    label_w = max(text_size(probe, t, font)[0] for t in row_labels) + 2 * PAD
    lines = [line for caption in captions for line in caption]
    col_w = max(cell_w + PAD, *(text_size(probe, t, font)[0] + 2 * PAD for t in column_labels),
                *(text_size(probe, t, small)[0] + 2 * PAD for t in lines))
    caption_h = 0
    if lines:
        caption_h = max(len(c) for c in captions) * (text_size(probe, "Ag", small)[1] + 4) + PAD
    title_h = line_h + 2 * PAD if title else 0
    head_h = line_h + 2 * PAD
    title_w = text_size(probe, title, font)[0] + 2 * PAD if title else 0
    width = max(label_w + col_w * len(column_labels) + PAD, title_w)
    height = title_h + head_h + (cell_h + caption_h + PAD) * len(row_labels)
    return SheetLayout(title_h, head_h, label_w, col_w, cell_w, cell_h, factor, (width, height), caption_h)


def contact_sheet(
    images: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
    captions: Sequence[Sequence[Sequence[str]]] | None = None,
    framed: tuple[int, int] | None = None,
) -> Image.Image:
    """A white grid with a title line, column headers on top and row headers on the left; ``captions`` (lines
    per cell, rows x columns) under the cells, and a red frame around the ``framed`` (row, column) cell."""
    if len(images) != len(row_labels) or any(len(row) != len(column_labels) for row in images):
        raise ValueError("labels do not match the grid")
    if captions is not None and [len(row) for row in captions] != [len(row) for row in images]:
        raise ValueError("captions do not match the grid")
    cell_size = max(im.width for row in images for im in row), max(im.height for row in images for im in row)
    flat = [caption for row in captions or [] for caption in row]
    layout = sheet_layout(cell_size, row_labels, column_labels, title, flat)
    font, small = load_font(FONT_SIZE), load_font(CAPTION_FONT_SIZE)
    sheet = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=font)
    for c, text in enumerate(column_labels):
        left, top, right, _ = layout.column_label_box(c)
        draw.text((left + (right - left - text_size(draw, text, font)[0]) // 2, top + PAD), text, fill="black",
                  font=font)
    for r, text in enumerate(row_labels):
        _, top, _, bottom = layout.row_label_box(r)
        draw.text((PAD, (top + bottom - text_size(draw, text, font)[1]) // 2), text, fill="black", font=font)
        for c, image in enumerate(images[r]):
            size = image.width * layout.factor, image.height * layout.factor
            sheet.paste(image.convert("RGB").resize(size, Image.Resampling.NEAREST), layout.cell_box(r, c)[:2])
            left, top, _, _ = layout.caption_box(r, c)
            for n, line in enumerate(captions[r][c] if captions else []):
                line_h = text_size(draw, "Ag", small)[1] + 4
                draw.text((left + PAD, top + 2 + n * line_h), line, fill=(40, 40, 40), font=small)
    if framed is not None:
        left, top, right, bottom = layout.cell_box(*framed)
        draw.rectangle((left - 4, top - 4, right + 3, bottom + 3), outline=PICK_COLOR, width=3)
    return sheet


def score_caption(scores: Scores) -> list[str]:
    """A scored cell's caption: its computable scores, two to a line."""
    items = scores.caption_items()
    return ["  ".join(items[i : i + 2]) for i in range(0, len(items), 2)]


def save_sheet(sheet: Image.Image, path: str | Path, base: Request, axes: Axes,
               scores: Sequence[Scores] | None = None, picked: int | None = None) -> Path:
    """Write the sheet PNG atomically, with the sweep (base request and axes; the cells' scores, row-major, and
    the picked cell when scored) in a text chunk."""
    sweep: dict[str, object] = {"base": base.to_dict(), "blocks": axes.blocks, "scales": axes.scales,
                                "content_scales": axes.content_scales,
                                "restyle_content_scales": axes.restyle_content_scales,
                                "content_field": axes.content_field}
    if scores is not None:
        sweep.update(scores=[s.to_dict() for s in scores], picked=picked)
    return save_png_atomically(sheet, path, {SHEET_KEY: json.dumps(sweep, sort_keys=True)})


@dataclass
class SweepOutput:
    """What a sweep wrote: the sheet and its cells (rows x columns) with their completed requests; when scored,
    the cells as settings + scores (row-major), the Pareto front and the pick (indices into ``cells``), the
    plot and the CSV."""

    sheet: Path
    paths: list[list[Path]]
    requests: list[list[Request]]
    cells: list[Cell] = field(default_factory=list)
    front: list[int] = field(default_factory=list)
    picked: int | None = None
    plot: Path | None = None
    table: Path | None = None

    def picked_request(self) -> Request:
        """The request of the picked cell."""
        if self.picked is None:
            raise UserError("this sweep picked no setting")
        columns = len(self.requests[0])
        return self.requests[self.picked // columns][self.picked % columns]


def render_sweep(
    pipe: StylePipeline,
    base: Request,
    axes: Axes,
    output: str | Path,
    on_cell: Callable[[Path], None] | None = None,
    title: str | None = None,
    scorer: Scorer | None = None,
    style_floor: float | None = None,
    progress: bool = False,
    content_floor: float | None = None,
) -> SweepOutput:
    """Run a sweep and write its cells (``write_png``, each as soon as it is made, with its scores when
    ``scorer`` is given) and the labelled sheet (titled with the shared settings unless ``title`` is given).
    Scored, it also writes the plot and the CSV; with ``style_floor``, it picks a cell (``pareto.pick``; with
    ``content_floor``, among the cells that keep enough of a restyled photo).
    ``progress`` shows each cell's step bar on stderr."""
    output = Path(output)
    paths: list[list[Path]] = [[] for _ in axes.rows]
    scores: list[list[Scores]] = [[] for _ in axes.rows]

    def save(r: int, c: int, request: Request, image: Image.Image) -> None:
        extra = None
        if scorer is not None:
            scores[r].append(scorer.score_request([image], request)[0])
            extra = scores[r][-1].png_text()
        path = write_png(image, output.with_name(cell_name(output.stem, axes, r, c)), request, extra=extra)
        paths[r].append(path)
        if on_cell is not None:
            on_cell(path)

    images, done = run_sweep(pipe, base, axes, save, progress)
    first = done[0][0]
    title = title or f"seed {first.seed}, {first.steps} steps, {first.width}x{first.height}: {first.prompt}"[:120]
    rows = [axes.row_label(*row) for row in axes.rows]
    columns = [axes.column_label(s) for s in axes.scales]
    if scorer is None:
        sheet = contact_sheet(images, rows, columns, title)
        return SweepOutput(save_sheet(sheet, output, first, axes), paths, done)
    cells = [Cell(_cell_settings(axes, r, c, paths[r][c]), scores[r][c], f"{rows[r]} | {columns[c]}")
             for r in range(len(rows)) for c in range(len(columns))]
    points = cell_points(cells)
    front = pareto_front(points)
    picked, failure = None, None
    if style_floor is not None:
        try:
            picked = pick(points, style_floor, content_kept(cells), content_floor)
        except UserError as err:  # the sheet, plot and table are still written
            failure = err
    framed = None if picked is None else divmod(picked, len(columns))
    captions = [[score_caption(s) for s in row] for row in scores]
    sheet = contact_sheet(images, rows, columns, title, captions, framed)
    out = SweepOutput(save_sheet(sheet, output, first, axes, [cell.scores for cell in cells], picked), paths, done,
                      cells, front, picked)
    out.plot = save_plot(sweep_plot(cells, front, picked, style_floor), plot_path(output))
    table = csv_path(output)
    write_text_atomically(table, cells_csv(cells, front, picked))
    out.table = table
    if failure is not None:
        raise failure
    return out


def _cell_settings(axes: Axes, row: int, column: int, path: Path) -> dict[str, object]:
    blocks, content_scale, restyle_content_scale = axes.rows[row]
    settings: dict[str, object] = {"blocks": blocks, "scale": axes.scales[column]}
    if content_scale is not None:
        settings[axes.content_field] = content_scale
    if restyle_content_scale is not None:
        settings["restyle_content_scale"] = restyle_content_scale
    return {**settings, "file": path.name}


def sweep_plot(cells: Sequence[Cell], front: Sequence[int], picked: int | None,
               style_floor: float | None) -> Image.Image:
    """Style against prompt score, one numbered point per cell, the Pareto front joined, the pick ringed with its
    style floor as a dashed line."""
    key = style_key(cells)
    points = cell_points(cells, key)
    threshold = None
    if picked is not None and style_floor is not None:
        best = max(p[0] for p in points if p is not None)
        value = style_threshold(best, style_floor)
        threshold = (value, f"style floor {value:.3f} ({style_floor:g} of the best)")
    return scatter_plot(points, [c.label for c in cells], SCORE_TITLES[key], SCORE_TITLES["clip_text"],
                        front=front, picked=picked, threshold=threshold,
                        title="sweep: style vs prompt fidelity, one point per cell")
