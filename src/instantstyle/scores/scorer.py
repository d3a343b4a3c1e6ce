"""Scores: how much style arrived, how well the prompt is followed, how much of the reference's content leaked.

The numbers the InstantStyle, CSGO, StyleShot and RB-Modulation papers report, computed in the
adapter's own CLIP space with the encoders generation already loads (no extra download):

- ``clip_text``: cosine of the image's CLIP image embedding and the prompt's CLIP text embedding
  (the text tower of the same CLIP as the image encoder: SDXL's ``text_encoder_2`` for ViT-bigG).
- ``clip_style``: cosine of the image's embedding and the weighted mean of the style references'
  embeddings, both encoded exactly as style references are (same encoder, preprocessing and fit).
- ``content_leak``: cosine of the image's embedding and the content prompt's text embedding.
- ``csd_style``: cosine of CSD style embeddings (``csd``), image vs weighted mean of the references.
- ``content_keep`` and ``csd_content_keep`` (restyled photos only): how much of the photo is kept, the cosine of the
  image's CLIP embedding and the photo's, and of their CSD content embeddings (InstantStyle-Plus prints the latter).

Each is a cosine in [-1, 1], ``None`` where it cannot be computed (no text tower in the encoder's
space, no content prompt, no CSD model, a plus-adapter style file). Higher is better except leak.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..core.embeddings import ImageEncoder, TextTower, blend, encode_reference, image_hash, load_image, load_style
from ..core.preflight import adapter_kind_of
from ..core.request import Request, StyleRef, check_prompt, read_png_text
from ..errors import UserError
from ..files import safe_json
from ..files.images import MAX_PIXELS
from ..loading import memory
from . import csd as csd_model

SCORE_KEYS = ("clip_text", "clip_style", "content_leak", "csd_style")
#: Scores of a restyled photo's image against the photo; in tables and files only where computed.
KEEP_KEYS = ("content_keep", "csd_content_keep")
ALL_SCORE_KEYS = SCORE_KEYS + KEEP_KEYS
#: The PNG text chunk holding an image's scores (``generate --score``, ``batch --score``, sweep cells).
PNG_SCORES_KEY = "instantstyle-scores"
#: Short names, for captions under images.
SCORE_SHORT = {"clip_text": "text", "clip_style": "style", "content_leak": "leak", "csd_style": "csd",
               "content_keep": "keep", "csd_content_keep": "csd keep"}
#: What each score is called in tables and on plot axes.
SCORE_TITLES = {
    "clip_text": "CLIP text (prompt fidelity)",
    "clip_style": "CLIP style (image similarity)",
    "content_leak": "content leak (lower is better)",
    "csd_style": "CSD style",
    "content_keep": "content kept (CLIP, image vs photo)",
    "csd_content_keep": "content kept (CSD content head)",
}


@dataclass(frozen=True)
class Scores:
    """The scores of one image; ``None`` where not computable."""

    clip_text: float | None = None
    clip_style: float | None = None
    content_leak: float | None = None
    csd_style: float | None = None
    content_keep: float | None = None
    csd_content_keep: float | None = None

    def __post_init__(self) -> None:
        for key in ALL_SCORE_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
                raise UserError(f"score {key} must be a number in [-1, 1] or null, got {value!r}")
            object.__setattr__(self, key, float(value))

    def get(self, key: str) -> float | None:
        """A score by name (``clip_text``, ``clip_style``, ``content_leak``, ``csd_style``, ``content_keep``...)."""
        if key not in ALL_SCORE_KEYS:
            raise UserError(f"unknown score {key!r} ({', '.join(ALL_SCORE_KEYS)})")
        return getattr(self, key)  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, float | None]:
        """Every score of ``SCORE_KEYS``, and those of ``KEEP_KEYS`` that were computed."""
        kept = {key: value for key in KEEP_KEYS if (value := getattr(self, key)) is not None}
        return {**{key: getattr(self, key) for key in SCORE_KEYS}, **kept}

    def png_text(self) -> dict[str, str]:
        """The PNG text chunk carrying these scores (``write_png``'s ``extra``)."""
        return {PNG_SCORES_KEY: json.dumps(self.to_dict())}

    def caption_items(self) -> list[str]:
        """The computable scores in short, style first: ``["style 0.812", "text 0.301"]``."""
        return [f"{SCORE_SHORT[k]} {format_value(v)}" for k in CAPTION_ORDER if (v := self.get(k)) is not None]

    def caption(self, sep: str = "  ") -> str:
        """The computable scores in one line: ``style 0.812  text 0.301`` (empty when none is)."""
        return sep.join(self.caption_items())

    @classmethod
    def from_dict(cls, data: Any) -> Scores:
        """From JSON data (a manifest line's ``scores``); unknown keys are a ``UserError``."""
        if not isinstance(data, dict):
            raise UserError(f"scores must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - set(ALL_SCORE_KEYS))
        if unknown:
            raise UserError(f"unknown score(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class ScoreRecord:
    """One scored image: what ``instantstyle score --json`` prints, one JSON object per line."""

    image: str
    scores: Scores

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, **self.scores.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ScoreRecord:
        data = safe_json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("image"), str):
            raise UserError("a score record is a JSON object with an 'image' path")
        data = dict(data)
        return cls(data.pop("image"), Scores.from_dict(data))


#: Captions list style first: what a style tool is judged on.
CAPTION_ORDER = ("clip_style", "csd_style", "clip_text", "content_leak", "content_keep", "csd_content_keep")


def read_png_scores(path: str | Path) -> Scores | None:
    """The scores stored in a PNG by ``write_png`` (``None``: none stored)."""
    text = read_png_text(path, PNG_SCORES_KEY)
    return None if text is None else Scores.from_dict(safe_json.loads(text))


def format_value(value: float | None, digits: int = 3) -> str:
    """A score for people: three decimals, ``-`` when not computable."""
    return "-" if value is None else f"{value:.{digits}f}"


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False, left: Sequence[int] = (0,)
) -> str:
    """Columns aligned for a terminal, or a markdown table; the ``left`` columns (names) align left, the
    rest (numbers) right."""
    if markdown:
        header, rows = [c.replace("|", "\\|") for c in header], [[c.replace("|", "\\|") for c in r] for r in rows]
    widths = [max(3, *(len(row[i]) for row in [header, *rows])) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return ("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells).rstrip()

    rule = ["-" * w if i in left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(header), *([line(rule)] if markdown else []), *(line(row) for row in rows)])


def table_keys(scores: Sequence[Scores]) -> tuple[str, ...]:
    """The columns of a table of scores: ``SCORE_KEYS``, then the ``KEEP_KEYS`` any of them has."""
    return SCORE_KEYS + tuple(k for k in KEEP_KEYS if any(s.get(k) is not None for s in scores))


def format_table(records: Sequence[ScoreRecord], markdown: bool = False) -> str:
    """Scored images as a table, one row per image, one column per score (``-``: not computable)."""
    keys = table_keys([r.scores for r in records])
    rows = [[r.image, *(format_value(r.scores.get(k)) for k in keys)] for r in records]
    return text_table(["image", *keys], rows, markdown)


@dataclass(frozen=True)
class Summary:
    """Mean and spread (sample standard deviation; 0 for one value) of a score over ``n`` images."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}"


def summarize(scores: Sequence[Scores]) -> dict[str, Summary | None]:
    """Per score key, the summary over the images where it was computable (``None`` where none was)."""
    out: dict[str, Summary | None] = {}
    for key in table_keys(scores):
        values = [v for s in scores if (v := s.get(key)) is not None]
        if not values:
            out[key] = None
            continue
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out[key] = Summary(mean, math.sqrt(var), len(values))
    return out


def mean_scores(scores: Sequence[Scores]) -> Scores:
    """The mean of each score over the images where it was computable."""
    return Scores(**{k: (s.mean if s else None) for k, s in summarize(scores).items()})


# --- the encoders --------------------------------------------------------------------------


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine similarity of two (1, D) embeddings, clamped to [-1, 1] against float rounding; ``None``
    when it is not a number (an embedding of a NaN image)."""
    value = torch.nn.functional.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1).item()
    return None if math.isnan(value) else max(-1.0, min(1.0, value))


def kept_photo(request: Request) -> str | None:
    """The image whose content a request's images should keep: the photo a restyle restyles, or the content image a
    CSGO checkpoint composes with (an IP-Adapter's content image is content to subtract: its leak is not kept)."""
    if request.restyle is not None:
        return request.restyle
    if request.content_image is not None and request.adapter is not None and adapter_kind_of(request.adapter) == "csgo":
        return request.content_image
    return None


def _as_image(item: Image.Image | str | Path, max_pixels: int | None) -> Image.Image:
    return item if isinstance(item, Image.Image) else load_image(item, "image", max_pixels)


def _style_refs(style: Sequence[StyleRef | str] | StyleRef | str) -> list[StyleRef]:
    items = [style] if isinstance(style, (str, StyleRef)) else list(style)
    return [s if isinstance(s, StyleRef) else StyleRef.parse(s) for s in items]


@dataclass
class Scorer:
    """Scores images with encoders given explicitly: the adapter's ``ImageEncoder``, the CLIP text tower
    of the same space (or ``None``), and CSD (or ``None``). With ``device``, the image encoder is readied
    there around each use (and released again with ``low_memory``), as generation does. Every image read from
    a file (scored images, style references) is held to ``max_pixels`` (``images.image_size``). With
    ``make_room`` (a memory budget's, see ``memory.Budget``) each model is asked room for first, and on a GPU the
    text tower and CSD come to the device only while they encode."""

    image_encoder: ImageEncoder
    text_tower: TextTower | None = None
    csd: csd_model.CsdModel | None = None
    device: torch.device | None = None
    dtype: torch.dtype = torch.float32
    low_memory: bool = False
    max_pixels: int | None = MAX_PIXELS
    make_room: Callable[[int], None] | None = None
    _cache: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.text_tower is not None:
            want = self.image_encoder.embed_dim
            if self.text_tower.projection_dim != want:
                raise UserError(
                    f"the text tower gives {self.text_tower.projection_dim}-d embeddings but the image encoder "
                    f"{want}-d: scores need the text tower of the image encoder's own CLIP"
                )

    def unavailable(self) -> dict[str, str]:
        """Scores this scorer can never compute, with the reason (for a one-time note to the user)."""
        reasons = {}
        if self.text_tower is None:
            reasons["clip_text"] = reasons["content_leak"] = (
                "no CLIP text tower in the image encoder's space (give the matching --content-text-encoder)")
        if self.csd is None:
            reasons["csd_style"] = "no CSD model (give --csd FILE)"
        return reasons

    @contextmanager
    def _encoder(self) -> Iterator[ImageEncoder]:
        if self.device is None:
            yield self.image_encoder
        else:
            with memory.encoder_in_use(self.image_encoder, self.device, self.dtype, self.low_memory,
                                       self.make_room) as enc:
                yield enc

    @contextmanager
    def _visiting(self, model: Any, weights: torch.nn.Module) -> Iterator[None]:
        """Under a memory budget on a GPU, ``model`` (moved by its ``to``; ``weights`` are its parameters) on the
        device for the block only, room made first; otherwise it stays where it is."""
        if (self.make_room is None or self.device is None or self.device.type != "cuda"
                or memory.on_device(weights, self.device)):
            yield
            return
        self.make_room(memory.module_bytes(weights))
        model.to(self.device)
        try:
            yield
        finally:
            model.to("cpu")
            torch.cuda.empty_cache()

    def _text(self, text: str) -> torch.Tensor:
        assert self.text_tower is not None
        key = ("text", text)
        if key not in self._cache:
            with self._visiting(self.text_tower.model, self.text_tower.model):
                self._cache[key] = self.text_tower.embed(text).cpu()
        return self._cache[key]

    def _reference(self, encoder: ImageEncoder, path: str, fit: str) -> torch.Tensor:
        key = ("clip", image_hash(path), fit)
        if key not in self._cache:
            image = load_image(path, "style image", self.max_pixels)
            self._cache[key] = encode_reference(image, encoder, "global", fit).cpu()
        return self._cache[key]

    def style_embedding(
        self, style: Sequence[StyleRef | str] | StyleRef | str, fit: str = "crop"
    ) -> torch.Tensor | None:
        """The weighted mean CLIP embedding (1, D) of the references (images or global style files);
        ``None`` when a style file holds patch features (plus adapters) instead."""
        refs = _style_refs(style)
        if not refs:
            return None
        want = self.image_encoder.embed_dim
        parts = []
        with self._encoder() as encoder:
            for ref in refs:
                if not ref.path.endswith(".safetensors"):
                    parts.append(self._reference(encoder, ref.path, fit))
                    continue
                saved = load_style(ref.path)
                if saved.kind != "global":
                    return None
                if saved.embeds.shape[-1] != want:
                    raise UserError(f"style file {ref.path} holds {saved.embeds.shape[-1]}-d embeddings; "
                                    f"the image encoder gives {want}-d")
                parts.append(saved.embeds.reshape(1, -1))
        return blend(parts, [ref.weight for ref in refs])

    def csd_embedding(self, style: Sequence[StyleRef | str] | StyleRef | str) -> torch.Tensor | None:
        """The weighted mean CSD embedding (1, dim) of the reference images; ``None`` without CSD or when a
        reference is a style file (CSD needs the pixels)."""
        refs = _style_refs(style)
        if self.csd is None or not refs or any(ref.path.endswith(".safetensors") for ref in refs):
            return None
        parts = []
        for ref in refs:
            key = ("csd", image_hash(ref.path))
            if key not in self._cache:
                with self._visiting(self.csd, self.csd.backbone):
                    image = load_image(ref.path, "style image", self.max_pixels)
                    self._cache[key] = csd_model.style_embeds([image], self.csd).cpu()
            parts.append(self._cache[key])
        return blend(parts, [ref.weight for ref in refs])

    def image_embeddings(self, images: Sequence[Image.Image | str | Path], fit: str = "crop") -> list[torch.Tensor]:
        """The CLIP image embedding (1, D) of each image, encoded as style references are (the images' side of
        ``clip_style`` and ``clip_text``)."""
        pictures = [_as_image(item, self.max_pixels) for item in images]
        with self._encoder() as encoder:
            return [encode_reference(picture, encoder, "global", fit).cpu() for picture in pictures]

    def photo_embeddings(self, photo: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(CLIP embedding, CSD content embedding or ``None``) of a restyled photo, encoded as the images are."""
        key = ("photo", image_hash(photo))
        if key not in self._cache:
            image = load_image(photo, "photo to restyle", self.max_pixels)
            with self._encoder() as encoder:
                self._cache[key] = encode_reference(image, encoder, "global", "crop").cpu()
            if self.csd is not None and self.csd.content_head is not None:
                with self._visiting(self.csd, self.csd.backbone):
                    content = csd_model.content_embeds([image], self.csd)
                assert content is not None
                self._cache[("csd-photo", key[1])] = content.cpu()
        return self._cache[key], self._cache.get(("csd-photo", key[1]))

    def score(
        self,
        images: Sequence[Image.Image | str | Path],
        prompt: str | None = None,
        style: Sequence[StyleRef | str] | StyleRef | str = (),
        content_prompt: str | None = None,
        fit: str = "crop",
        photo: str | None = None,
    ) -> list[Scores]:
        """Score each image against the prompt, the style references (``PATH[:WEIGHT]`` or ``StyleRef``;
        images or style files) and the content prompt; with the ``photo`` it restyles, how much of it is kept.
        Images and references are encoded alike (``fit``)."""
        for label, given in (("prompt", prompt), ("content prompt", content_prompt)):
            if given is not None:
                check_prompt(label, given)
        pictures = [_as_image(item, self.max_pixels) for item in images]
        style_clip = self.style_embedding(style, fit)
        style_csd = self.csd_embedding(style)
        usable_prompt = prompt if prompt and prompt.strip() else None
        usable_content = content_prompt if content_prompt and content_prompt.strip() else None
        text = self._text(usable_prompt) if self.text_tower and usable_prompt else None
        content = self._text(usable_content) if self.text_tower and usable_content else None
        clip = self.image_embeddings(pictures, fit)
        csd, csd_content = None, None
        photo_clip, photo_csd = self.photo_embeddings(photo) if photo is not None else (None, None)
        if self.csd is not None and (style_csd is not None or photo_csd is not None):
            with self._visiting(self.csd, self.csd.backbone):
                csd, csd_content = csd_model.embed_images(pictures, self.csd)
        return [
            Scores(
                clip_text=None if text is None else cosine(emb, text),
                clip_style=None if style_clip is None else cosine(emb, style_clip),
                content_leak=None if content is None else cosine(emb, content),
                csd_style=None if csd is None or style_csd is None else cosine(csd[i : i + 1], style_csd),
                content_keep=None if photo_clip is None else cosine(emb, photo_clip),
                csd_content_keep=None if photo_csd is None or csd_content is None
                else cosine(csd_content[i : i + 1], photo_csd),
            )
            for i, emb in enumerate(clip)
        ]

    def score_request(
        self, images: Sequence[Image.Image | str | Path], request: Request, content_prompt: str | None = None
    ) -> list[Scores]:
        """Score a request's images against its prompt, style references and fit; the leak against
        ``content_prompt``, else the request's own content prompt; what is kept against the photo a restyle
        restyles or the content image CSGO composes with (``kept_photo``)."""
        return self.score(images, request.prompt, request.style, content_prompt or request.content_prompt,
                          request.style_fit, kept_photo(request))
