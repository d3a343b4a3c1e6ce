"""Score plots as PNG, drawn with PIL (no plotting dependency): one point per setting, style against
prompt score, the Pareto front joined, the pick ringed, a numbered legend naming each setting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..files.atomic import save_png_atomically
from .drawing import font as load_font
from .drawing import text_size

PLOT_SIZE = (720, 540)  # the axes' box with its margins, legend to the right
MARGIN = {"left": 84, "right": 24, "top": 56, "bottom": 76}
FONT_SIZE = 16
POINT_R = 6
COLORS = {"point": (70, 110, 170), "front": (230, 120, 20), "pick": (200, 30, 30), "grid": (225, 225, 225),
          "axis": (60, 60, 60), "error": (150, 150, 150), "note": (170, 40, 40)}

def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) covering [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-6:
        if value >= low - step * 1e-6:
            ticks.append(round(value, 10))
        value += step
    return ticks


def _axis_range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = max((high - low) * 0.08, 0.002)
    return low - pad, high + pad


def scatter_plot(
    points: Sequence[tuple[float, float] | None],
    labels: Sequence[str],
    x_label: str,
    y_label: str,
    *,
    front: Sequence[int] = (),
    picked: int | None = None,
    errors: Sequence[tuple[float, float] | None] | None = None,
    threshold: tuple[float, str] | None = None,
    title: str = "",
    note: str = "",
) -> Image.Image:
    """A scatter plot of ``points`` (x, y) numbered 1.. with ``labels`` in a legend; ``front`` (indices)
    joined by a line, ``picked`` ringed, ``errors`` (x, y half-widths) as bars, ``threshold`` (x, label) a
    dashed vertical line (the pick's style floor); points that are ``None``
    are listed in the legend as "no score". ``note`` is printed under the axes (e.g. "numbers meaningless")."""
    if len(labels) != len(points) or (errors is not None and len(errors) != len(points)):
        raise ValueError("one label (and error) per point")
    font, small = load_font(FONT_SIZE), load_font(FONT_SIZE - 3)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    front_set = set(front)
    legend = [f"{i + 1}. {label}" + ("  (no score)" if points[i] is None else "")
              + ("  [front]" if i in front_set else "") + ("  <- pick" if i == picked else "")
              for i, label in enumerate(labels)]
    line_h = text_size(probe, "Ag", small)[1] + 6
    legend_w = max([text_size(probe, t, small)[0] for t in legend] + [0]) + 32
    width = PLOT_SIZE[0] + legend_w
    height = max(PLOT_SIZE[1], MARGIN["top"] + line_h * len(legend) + 20)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    box = (MARGIN["left"], MARGIN["top"], PLOT_SIZE[0] - MARGIN["right"], PLOT_SIZE[1] - MARGIN["bottom"])

    known = [(i, p) for i, p in enumerate(points) if p is not None]
    bars = [(errors[i] if errors else None) or (0.0, 0.0) for i in range(len(points))]
    xs = [p[0] + s * bars[i][0] for i, p in known for s in (-1, 1)] or [0.0]
    ys = [p[1] + s * bars[i][1] for i, p in known for s in (-1, 1)] or [0.0]
    (x0, x1), (y0, y1) = _axis_range(xs), _axis_range(ys)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]), box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))

    for tick in nice_ticks(x0, x1):
        px = to_px(tick, y0)[0]
        draw.line([(px, box[1]), (px, box[3])], fill=COLORS["grid"])
        text = f"{tick:g}"
        draw.text((px - text_size(draw, text, small)[0] / 2, box[3] + 6), text, fill=COLORS["axis"], font=small)
    for tick in nice_ticks(y0, y1):
        py = to_px(x0, tick)[1]
        draw.line([(box[0], py), (box[2], py)], fill=COLORS["grid"])
        text = f"{tick:g}"
        tw, th = text_size(draw, text, small)
        draw.text((box[0] - tw - 6, py - th / 2 - 2), text, fill=COLORS["axis"], font=small)
    draw.rectangle(box, outline=COLORS["axis"])
    if threshold is not None and x0 <= threshold[0] <= x1:
        px = to_px(threshold[0], y0)[0]
        for dash in range(box[1], box[3], 10):
            draw.line([(px, dash), (px, min(dash + 5, box[3]))], fill=COLORS["pick"], width=1)
        draw.text((px + 4, box[1] + 4), threshold[1], fill=COLORS["pick"], font=small)
    elif threshold is not None:  # every point is above it: say where it is instead of drawing it
        draw.text((box[0] + 6, box[1] + 4), f"{threshold[1]}: left of the axes", fill=COLORS["pick"], font=small)

    tw, th = text_size(draw, x_label, font)
    draw.text(((box[0] + box[2] - tw) / 2, box[3] + 30), x_label, fill="black", font=font)
    label_img = Image.new("RGB", (text_size(probe, y_label, font)[0] + 4, th + 8), "white")
    ImageDraw.Draw(label_img).text((2, 0), y_label, fill="black", font=font)
    rotated = label_img.rotate(90, expand=True)
    image.paste(rotated, (8, int((box[1] + box[3] - rotated.height) / 2)))
    if title:
        draw.text((box[0], 14), title, fill="black", font=font)
    if note:
        draw.text((box[0], PLOT_SIZE[1] - 22), note, fill=COLORS["note"], font=small)

    for i, p in known:
        (ex, ey), (cx, cy) = bars[i], to_px(*p)
        if ex or ey:
            left, right = to_px(p[0] - ex, p[1])[0], to_px(p[0] + ex, p[1])[0]
            top, bottom = to_px(p[0], p[1] + ey)[1], to_px(p[0], p[1] - ey)[1]
            draw.line([(left, cy), (right, cy)], fill=COLORS["error"], width=1)
            draw.line([(cx, top), (cx, bottom)], fill=COLORS["error"], width=1)
    line = sorted((points[i] for i in front if points[i] is not None), key=lambda p: (p[0], -p[1]))  # type: ignore[index]
    if len(line) > 1:
        draw.line([to_px(*p) for p in line], fill=COLORS["front"], width=2)  # type: ignore[misc]
    for i, p in known:
        cx, cy = to_px(*p)
        color = COLORS["front"] if i in front_set else COLORS["point"]
        draw.ellipse((cx - POINT_R, cy - POINT_R, cx + POINT_R, cy + POINT_R), fill=color, outline="black")
        if i == picked:
            r = POINT_R + 5
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=COLORS["pick"], width=3)
        draw.text((cx + POINT_R + 3, cy - POINT_R - 12), str(i + 1), fill="black", font=small)

    for n, text in enumerate(legend):
        color = COLORS["pick"] if n == picked else (COLORS["front"] if n in front_set else (40, 40, 40))
        draw.text((PLOT_SIZE[0] + 8, MARGIN["top"] + n * line_h), text, fill=color, font=small)
    return image


def save_plot(image: Image.Image, path: str | Path) -> Path:
    """Write a plot PNG atomically (never a partial file)."""
    return save_png_atomically(image, path, {})
