"""Scores of a styled video: the image scores of every frame (``clip_style``, ``csd_style`` against the style
references, ``clip_text`` against the prompt, ``content_leak``), their means, and temporal consistency: the mean
CLIP image cosine of consecutive frames, as video-editing papers report it (in the adapter's own CLIP space)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..core.request import StyleRef
from .scorer import SCORE_KEYS, Scorer, Scores, cosine, format_value, mean_scores, text_table


@dataclass(frozen=True)
class VideoScores:
    """Per-frame scores and temporal consistency (``None``: fewer than two frames, or a NaN frame)."""

    frames: list[Scores]
    temporal_consistency: float | None

    @property
    def mean(self) -> Scores:
        return mean_scores(self.frames)

    def to_dict(self) -> dict[str, Any]:
        return {"temporal_consistency": self.temporal_consistency, "mean": self.mean.to_dict(),
                "frames": [s.to_dict() for s in self.frames]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self, markdown: bool = False) -> str:
        """The mean of each score over the frames, and temporal consistency, one row (for a terminal, or markdown)."""
        keys = [k for k in SCORE_KEYS if self.mean.get(k) is not None]
        header = ["frames", *(f"{k} (mean)" for k in keys), "temporal_consistency"]
        row = [str(len(self.frames)), *(format_value(self.mean.get(k)) for k in keys),
               format_value(self.temporal_consistency)]
        return text_table(header, [row], markdown=markdown)


def temporal_consistency(scorer: Scorer, frames: Sequence[Image.Image], fit: str = "crop") -> float | None:
    """The mean cosine of the CLIP image embeddings of consecutive frames."""
    embeds = scorer.image_embeddings(frames, fit)
    pairs = [cosine(a, b) for a, b in zip(embeds, embeds[1:], strict=False)]
    values = [v for v in pairs if v is not None]
    return sum(values) / len(values) if values and len(values) == len(pairs) else None


def score_video(scorer: Scorer, frames: Sequence[Image.Image], prompt: str | None,
                style: Sequence[StyleRef | str] | StyleRef | str, content_prompt: str | None = None,
                fit: str = "crop") -> VideoScores:
    """Every frame scored against the prompt and the style references, and the clip's temporal consistency."""
    return VideoScores(scorer.score(frames, prompt, style, content_prompt, fit),
                       temporal_consistency(scorer, frames, fit))
