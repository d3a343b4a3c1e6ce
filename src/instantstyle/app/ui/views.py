"""What the page shows as HTML: reference cards, thumbnails, results with their score tables, history captions.

Pictures are small data URIs made here (thumbnails within the app's pixel cap; a style file's stored preview), so a
card never names a server path. Every picture has a text alternative; a better or worse score is marked by a sign
as well as by its colour.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ...core.embeddings import load_style
from ...core.styles import read_preview
from ...errors import UserError
from ...files.images import MAX_PIXELS, image_size, thumbnail
from ...scores.scorer import CAPTION_ORDER, SCORE_SHORT, SCORE_TITLES, Scores, format_value

#: Thumbnails on cards are this many pixels square (shown at half that on the page, sharp on a retina screen).
THUMB_SIDE = 128
#: Scores where lower is better (the rest: higher is better).
LOWER_IS_BETTER = frozenset({"content_leak"})


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def picture(path: str | None, max_pixels: int | None = MAX_PIXELS) -> tuple[str | None, str]:
    """(a thumbnail data URI or ``None``, a short description) of an uploaded image or style file."""
    if not path:
        return None, ""
    try:
        if path.endswith(".safetensors"):
            preview = read_preview(load_style(path).metadata)
            return (None if preview is None else data_uri(preview)), "style file"
        width, height = image_size(path, "image", max_pixels)
        return data_uri(thumbnail(path, THUMB_SIDE, "image", max_pixels)), f"{width}×{height}"
    except UserError:
        return None, "not readable"


def thumb_html(path: str | None, what: str, max_pixels: int | None = MAX_PIXELS) -> str:
    """A small labelled picture of one upload (composition, content image, init image, masks), or nothing."""
    uri, note = picture(path, max_pixels)
    if not path:
        return ""
    alt = html.escape(f"{what} ({note})")
    body = (f'<img src="{uri}" alt="{alt}">' if uri
            else f'<span class="no-thumb" role="img" aria-label="{alt}">{html.escape(note)}</span>')
    return f'<figure class="thumb">{body}<figcaption>{html.escape(note)}</figcaption></figure>'


def card_html(path: str | None, index: int, max_pixels: int | None = MAX_PIXELS) -> str:
    """One reference card's picture and caption (its weight slider and remove button are gradio components)."""
    if not path:
        return ""
    uri, note = picture(path, max_pixels)
    alt = html.escape(f"style reference {index + 1}: {note}")
    body = (f'<img src="{uri}" alt="{alt}">' if uri
            else f'<span class="no-thumb" role="img" aria-label="{alt}">{html.escape(note)}</span>')
    return f'<figure class="ref-thumb">{body}<figcaption>#{index + 1} · {html.escape(note)}</figcaption></figure>'


#: Results larger than this (long side, pixels) are shown scaled down (the PNG download has every pixel).
SHOWN_SIDE = 768


@dataclass(frozen=True)
class Shown:
    """One image made by a run, as the page shows it: its file, seed, number in the run and scores."""

    path: str
    seed: int | None
    number: int
    scores: Scores | None


def result_uri(path: str | Path) -> str:
    """A result as a data URI: the PNG itself when small, else a scaled JPEG (never a server path in the page)."""
    with Image.open(path) as image:
        if max(image.size) <= SHOWN_SIDE // 2:
            return data_uri(image.convert("RGB"))
        image.thumbnail((SHOWN_SIDE, SHOWN_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_keys(scores: Sequence[Scores | None]) -> list[str]:
    """The scores computed for any image of a run, style first (``CAPTION_ORDER``, then any other score)."""
    known = [s.to_dict() for s in scores if s is not None]
    keys = [k for k in (*CAPTION_ORDER, *(k for d in known for k in d)) if any(d.get(k) is not None for d in known)]
    return list(dict.fromkeys(keys))


def ranks(scores: Sequence[Scores | None], key: str) -> list[str]:
    """Per image, ``better``/``worse`` for the best/worst value of ``key`` in the run (``""`` otherwise, or when all
    are equal or only one image has the score)."""
    values = [None if s is None else s.to_dict().get(key) for s in scores]
    present = [v for v in values if v is not None]
    if len(present) < 2 or max(present) == min(present):
        return [""] * len(values)
    best, worst = (min(present), max(present)) if key in LOWER_IS_BETTER else (max(present), min(present))
    return ["better" if v == best else "worse" if v == worst else "" for v in values]


def score_table(scores: Scores | None, keys: Sequence[str], marks: dict[str, str], number: int) -> str:
    """One image's small score table: a row per score, marked better/worse against the run's other images."""
    if scores is None or not keys:
        return '<p class="no-scores">not scored</p>'
    rows = []
    for key in keys:
        value, mark = scores.to_dict().get(key), marks.get(key, "")
        sign = {"better": " ▲", "worse": " ▼"}.get(mark, "")
        hint = {"better": "best of this run", "worse": "worst of this run"}.get(mark, "")
        direction = "lower is better" if key in LOWER_IS_BETTER else "higher is better"
        label = f'<th scope="row" title="{html.escape(SCORE_TITLES.get(key, key))}">{SCORE_SHORT.get(key, key)}</th>'
        cell = (f'<td class="{mark}" title="{direction}{"; " + hint if hint else ""}">{format_value(value)}'
                f'{f"<span aria-label={chr(34)}{hint}{chr(34)}>{sign}</span>" if sign else ""}</td>')
        rows.append(f"<tr>{label}{cell}</tr>")
    return f'<table class="scores" aria-label="scores of image {number}">{"".join(rows)}</table>'


def results_html(shown: Sequence[Shown]) -> str:
    """The results of one run: each image with its score table under it."""
    if not shown:
        return ""
    keys = score_keys([s.scores for s in shown])
    marks = {key: ranks([s.scores for s in shown], key) for key in keys}
    figures = []
    for i, item in enumerate(shown):
        what = f"result {item.number}" + (f", seed {item.seed}" if item.seed is not None else "")
        table = score_table(item.scores, keys, {k: m[i] for k, m in marks.items()}, item.number)
        figures.append(f'<figure class="result"><img src="{result_uri(item.path)}" alt="{html.escape(what)}">'
                       f"<figcaption>{html.escape(what)}</figcaption>{table}</figure>")
    return f'<div class="results">{"".join(figures)}</div>'
