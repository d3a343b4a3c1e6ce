"""Let the numbers choose: the Pareto front of settings over (style, prompt) scores, and the pick on it.

Style and prompt fidelity pull against each other (more image features: more style, less prompt), so
there is no single best setting, only the front of settings no other beats on both. The pick is the
front's setting with the best prompt score among those whose style score stays within a fraction
(``style_floor``) of the best style score: as much prompt as possible for a style given up by at
most ``1 - style_floor``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .scorer import ALL_SCORE_KEYS, Scores, table_keys

DEFAULT_STYLE_FLOOR = 0.9
Point = tuple[float, float]  # (style score, prompt score)


@dataclass(frozen=True)
class Cell:
    """One setting and the (mean) scores of its images, e.g. a sweep cell or a probed block."""

    settings: dict[str, Any]
    scores: Scores
    label: str = ""


def style_key(cells: Sequence[Cell]) -> str:
    """The style score to compare on: ``csd_style`` when every cell has it (the style-specific measure
    the papers report), else ``clip_style``."""
    if cells and all(cell.scores.csd_style is not None for cell in cells):
        return "csd_style"
    return "clip_style"


def cell_points(cells: Sequence[Cell], style: str = "auto", prompt: str = "clip_text") -> list[Point | None]:
    """(style, prompt) per cell, ``None`` where either score is missing."""
    style = style_key(cells) if style == "auto" else style
    for key in (style, prompt):
        if key not in ALL_SCORE_KEYS:
            raise UserError(f"unknown score {key!r} ({', '.join(ALL_SCORE_KEYS)})")
    points: list[Point | None] = []
    for cell in cells:
        s, p = cell.scores.get(style), cell.scores.get(prompt)
        points.append(None if s is None or p is None else (s, p))
    return points


def _dominates(a: Point, b: Point) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def pareto_front(points: Sequence[Point | None]) -> list[int]:
    """Indices of the points no other point beats on both scores (higher is better on both), ordered by
    style score, best first. Equal points are all on the front; ``None`` points never are."""
    known = [(i, p) for i, p in enumerate(points) if p is not None]
    front = [i for i, p in known if not any(_dominates(q, p) for _, q in known)]
    return sorted(front, key=lambda i: (-points[i][0], -points[i][1], i))  # type: ignore[index]


def style_threshold(best: float, style_floor: float) -> float:
    """The lowest style score that still counts as within ``style_floor`` of ``best``: ``floor * best`` for
    a positive best; for a negative best (cosines may be) the same distance below it."""
    return best - (1.0 - style_floor) * abs(best)


def content_key(cells: Sequence[Cell]) -> str:
    """The content-kept score of restyled photos to compare on: ``csd_content_keep`` when every cell has it (what
    InstantStyle-Plus prints), else ``content_keep``."""
    if cells and all(cell.scores.csd_content_keep is not None for cell in cells):
        return "csd_content_keep"
    return "content_keep"


def content_kept(cells: Sequence[Cell]) -> list[float | None]:
    """Each cell's content-kept score (``content_key``), ``None`` where not computed."""
    key = content_key(cells)
    return [cell.scores.get(key) for cell in cells]


def pick(points: Sequence[Point | None], style_floor: float = DEFAULT_STYLE_FLOOR,
         kept: Sequence[float | None] | None = None, content_floor: float | None = None) -> int:
    """The index of the setting with the best prompt score among those whose style score is at least
    ``style_threshold(best style, style_floor)``; ties go to the better style, then the first. The pick
    is always on the Pareto front of the settings it may take. With ``content_floor`` (restyled photos), only settings
    whose content-kept score (``kept``) is within that fraction of the best one's may be taken (the style floor is
    then relative to the best style among them)."""
    for name, floor in (("style", style_floor), ("content", content_floor)):
        if floor is None and name == "content":
            continue
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise UserError(f"{name} floor is a fraction of the best {name} score (0 to 1), got {floor!r}")
    if content_floor is not None:
        values = [v for v in (kept or ()) if v is not None]
        if not values or kept is None or len(kept) != len(points):
            raise UserError("--pick-content-floor needs content-kept scores (a sweep restyling a photo)")
        floor = style_threshold(max(values), content_floor)
        points = [p if k is not None and k >= floor else None for p, k in zip(points, kept, strict=True)]
    known = [(i, p) for i, p in enumerate(points) if p is not None]
    if not known:
        raise UserError("no setting has both a style and a prompt score to pick from")
    floor = style_threshold(max(p[0] for _, p in known), style_floor)
    eligible = [(i, p) for i, p in known if p[0] >= floor]
    return min(eligible, key=lambda item: (-item[1][1], -item[1][0], item[0]))[0]


def cells_csv(cells: Sequence[Cell], front: Sequence[int] = (), picked: int | None = None) -> str:
    """All cells as CSV: label, every setting (union of keys, first-seen order), every score (empty when
    not computable), whether on the front and whether picked."""
    import csv
    import io

    setting_keys = list(dict.fromkeys(key for cell in cells for key in cell.settings))
    score_keys = table_keys([cell.scores for cell in cells])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", *setting_keys, *score_keys, "on_front", "picked"])
    on_front = set(front)
    for i, cell in enumerate(cells):
        scores = [cell.scores.get(key) for key in score_keys]
        writer.writerow([cell.label, *(cell.settings.get(key, "") for key in setting_keys),
                         *("" if v is None else repr(v) for v in scores), int(i in on_front), int(i == picked)])
    return buffer.getvalue()
