"""A request's style as diffusers takes it: ``ip_adapter_image_embeds``, one entry per slot.

Slots are the main adapter (the request's style references), each further adapter (its own references),
then the composition image (sharing the main adapter's weights; see ``routing``); a photo to restyle comes first
and the main style last. References are encoded
once, in memory and on disk with a cache folder (``EmbeddingStore``), blended by weight (or kept apart
for regions), and the main adapter's style has its content subtracted: InstantStyle's
``style - content_scale * content`` in CLIP space, the content from a text tower of the image encoder's
CLIP or from a content image.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..files.images import MAX_PIXELS, load_image, thumbnail
from ..loading import memory
from ..loading.cache import EmbeddingCache, encoder_fingerprint
from .adapter import AdapterWeights
from .embeddings import (
    ImageEncoder,
    StyleFile,
    TextTower,
    blend,
    encode_reference,
    image_hash,
    load_style,
    save_style,
    subtract_content,
    unconditional_embeds,
)
from .request import Request, StyleRef


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter loaded in the denoiser and the image encoder that makes its embeddings."""

    weights: AdapterWeights  # kind and dims (the weights themselves live in the denoiser)
    encoder: ImageEncoder
    negative: str = "ip-adapter"  # how its CFG negative is made (``embeddings.NEGATIVE_RULES``; the family says)


@dataclass
class EmbeddingMemory:
    """Reference embeddings kept for the process, by (image, encoder, adapter kind, fit), and how many times an image
    encoder ran to make them. Several pipelines may share one (``StylePipeline.from_pretrained(...,
    embedding_memory=)``: a batch worker keeps the styles it has encoded across the models it loads)."""

    tensors: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict, repr=False)
    encoder_runs: int = 0


@dataclass
class EmbeddingStore:
    """Reference embeddings, each computed once: kept in ``memory`` for the process and, with a cache folder,
    on ``disk`` across processes; the encoder only runs for an image seen nowhere (see ``loading.memory`` for
    where it lives in between)."""

    device: torch.device
    dtype: torch.dtype
    low_memory: bool = False
    disk: EmbeddingCache | None = None
    max_pixels: int | None = MAX_PIXELS  # the cap on every reference image read (see ``images``)
    make_room: Callable[[int], None] | None = None  # asked for an encoder's bytes first (a memory budget)
    memory: EmbeddingMemory = field(default_factory=EmbeddingMemory, repr=False)

    def encode(self, path: str | None, use: LoadedAdapter, fit: str = "crop", size: tuple[int, int] | None = None
               ) -> torch.Tensor:
        """One reference image (fitted to a square by ``fit``) through the adapter's encoder, cached by the
        image's content, the encoder, the adapter kind and the fit. ``size``: the image resized to it first (PIL's
        default filter; CSGO's content image at the output size); ``path`` ``None``: a black image of ``size``."""
        if path is None and size is None:
            raise ValueError("a black image needs a size")
        key = (image_hash(path) if path is not None else "<black>", encoder_fingerprint(use.encoder.identity),
               use.weights.kind, fit, *((f"{size[0]}x{size[1]}",) if size is not None else ()))
        known = self.memory.tensors
        if key not in known:
            embeds = self.disk.get(key) if self.disk else None
            if embeds is None:
                if path is None:
                    assert size is not None
                    image = Image.new("RGB", size)
                else:
                    image = load_image(path, "style image" if size is None else "content image", self.max_pixels)
                    image = image if size is None else image.resize(size, Image.Resampling.BICUBIC)
                with memory.encoder_in_use(use.encoder, self.device, self.dtype, self.low_memory,
                                           self.make_room) as encoder:
                    embeds = encode_reference(image, encoder, use.weights.kind, fit).cpu()
                self.memory.encoder_runs += 1
                if self.disk:
                    self.disk.put(key, embeds)
            known[key] = embeds
        return known[key]

    def negative(self, like: torch.Tensor, use: LoadedAdapter) -> torch.Tensor:
        """The CFG negative embedding shaped like ``like``, by the adapter's rule: zeros, or an encoded blank
        (plus adapters) or black image (FLUX), encoded once per encoder."""
        if use.negative == "zeros" or (use.negative == "ip-adapter" and use.weights.kind == "global"):
            return unconditional_embeds(like, None, use.weights.kind, "zeros")
        key = ("<unconditional>", encoder_fingerprint(use.encoder.identity), use.weights.kind, use.negative)
        known = self.memory.tensors
        if key not in known:
            with memory.encoder_in_use(use.encoder, self.device, self.dtype, self.low_memory,
                                       self.make_room) as encoder:
                known[key] = unconditional_embeds(like, encoder, use.weights.kind, use.negative).cpu()
            self.memory.encoder_runs += 1
        return known[key].expand_as(like)

    def references(self, refs: tuple[StyleRef, ...], use: LoadedAdapter, fit: str, regions: bool) -> torch.Tensor:
        """Style references (images, or style files made for this adapter) blended by weight; with regions,
        one row per reference instead (each weighted inside its region, see ``routing``)."""
        parts = []
        for ref in refs:
            if ref.path.endswith(".safetensors"):
                style = load_style(ref.path)
                if style.kind != use.weights.kind or style.embeds.shape[-1] != use.weights.image_embed_dim:
                    raise UserError(f"style file {ref.path} was made for a {style.kind} adapter of another width")
                tokens = encoder_tokens(use.encoder) if style.kind == "plus" else None
                if tokens is not None and style.embeds.shape[1] != tokens:
                    raise UserError(f"style file {ref.path}: holds {style.embeds.shape[1]} image tokens; this "
                                    f"adapter's encoder makes {tokens}")
                parts.append(style.embeds)
            else:
                parts.append(self.encode(ref.path, use, fit))
        if regions:
            return torch.cat(parts)
        return blend(parts, [ref.weight for ref in refs])


def needs_text_tower(request: Request, main: LoadedAdapter) -> bool:
    """Whether the request's content is a prompt to subtract (a global adapter's), which a text tower in the image
    encoder's space embeds."""
    return request.content_prompt is not None and request.content_image is None and main.weights.kind == "global"


def encoder_tokens(encoder: ImageEncoder) -> int | None:
    """How many patch tokens (CLS included) the encoder's penultimate layer gives a plus adapter, from its config
    (``None``: a config that does not say)."""
    config = encoder.model.config
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not isinstance(size, int) or not isinstance(patch, int) or patch < 1:
        return None
    return (size // patch) ** 2 + (1 if "clip" in str(getattr(config, "model_type", "")) else 0)


def content_embeds(
    store: EmbeddingStore, request: Request, main: LoadedAdapter, text_tower: TextTower | None
) -> torch.Tensor | None:
    """The content to subtract: the content prompt through ``text_tower`` (the ``TextTower`` of the image encoder's
    space; ``needs_text_tower``), or the content image through the image encoder; ``None`` without either."""
    if request.content_prompt is None and request.content_image is None:
        return None
    if main.weights.kind != "global":
        raise UserError("content subtraction needs a global adapter; this is a plus (patch-feature) adapter")
    if request.content_image is not None:
        if not Path(request.content_image).is_file():
            raise UserError(f"content image {request.content_image}: no such file")
        return store.encode(request.content_image, main)
    if text_tower is None:
        raise ValueError("a content prompt needs the text tower of the image encoder's space")
    return text_tower.embed(request.content_prompt or "")


def style_embeds(
    store: EmbeddingStore, request: Request, main: LoadedAdapter, text_tower: TextTower | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(style, negative): the blended references minus ``content_scale`` times the content (InstantStyle),
    and the CFG negative (zeros for global adapters)."""
    style = store.references(request.style, main, request.style_fit, bool(request.regions))
    content = content_embeds(store, request, main, text_tower)
    if content is not None:
        style = subtract_content(style, content.cpu(), request.content_scale)
    return style, store.negative(style, main)


def slot_embeds(
    store: EmbeddingStore, request: Request, main: LoadedAdapter, further: list[LoadedAdapter],
    text_tower: TextTower | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(style, negative) per slot: the main style (content subtracted), each further adapter's, then the
    composition image's (main adapter). ``further`` pairs with ``request.adapters``."""
    pairs = [style_embeds(store, request, main, text_tower)]
    for extra, use in zip(request.adapters, further, strict=True):
        style = store.references(extra.style, use, request.style_fit, bool(extra.regions))
        pairs.append((style, store.negative(style, use)))
    if request.composition is not None:
        layout = store.encode(request.composition, main, request.style_fit)
        pairs.append((layout, store.negative(layout, main)))
    if request.restyle is not None:  # InstantStyle-Plus: the photo's content slot first, the style last
        content = store.encode(request.restyle, main, "crop")
        pairs = [(content, store.negative(content, main)), *pairs[1:], pairs[0]]
    return pairs


def save_style_file(
    store: EmbeddingStore, request: Request, main: LoadedAdapter, path: str | Path, extra: dict[str, str] | None = None
) -> Path:
    """Save the request's blended references (before content subtraction) as a style file, reusable without
    the images (``extra``: more metadata, e.g. the web UI's settings)."""
    style = store.references(request.style, main, request.style_fit, bool(request.regions))
    references = json.dumps([{"path": r.path, "weight": r.weight} for r in request.style])
    metadata = {**(extra or {}), "adapter": main.weights.path, "references": references}
    preview = style_preview(request.style, store.max_pixels)
    if preview is not None:
        metadata[PREVIEW_KEY] = preview
    negative = store.negative(style, main)
    return save_style(path, StyleFile(style, negative, main.weights.kind, main.encoder.identity, metadata))


#: The style-file metadata key holding a small preview of its references (base64 PNG); files without one still load.
PREVIEW_KEY = "preview"
#: A preview is a row of at most ``PREVIEW_REFS`` squares of ``PREVIEW_SIDE`` pixels (a few kilobytes).
PREVIEW_SIDE, PREVIEW_REFS = 64, 4


def style_preview(refs: Sequence[StyleRef], max_pixels: int | None = MAX_PIXELS) -> str | None:
    """A small picture of the references, for style-file cards: their centre squares side by side (a reference that
    is itself a style file gives its own preview), as base64 PNG; ``None`` when none can be shown."""
    squares = []
    for ref in refs[:PREVIEW_REFS]:
        if ref.path.endswith(".safetensors"):
            squares.append(read_preview(load_style(ref.path).metadata))
        else:
            squares.append(thumbnail(ref.path, PREVIEW_SIDE, "style image", max_pixels))
    shown = [s.resize((PREVIEW_SIDE, PREVIEW_SIDE)) for s in squares if s is not None]
    if not shown:
        return None
    strip = Image.new("RGB", (PREVIEW_SIDE * len(shown), PREVIEW_SIDE))
    for i, square in enumerate(shown):
        strip.paste(square.convert("RGB"), (i * PREVIEW_SIDE, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def read_preview(metadata: dict[str, str]) -> Image.Image | None:
    """A style file's preview picture, or ``None``: none stored (files saved before previews), or not a small PNG
    (a crafted file's preview is never decoded past the size a preview has)."""
    text = metadata.get(PREVIEW_KEY)
    if not text or len(text) > 4 * PREVIEW_SIDE * PREVIEW_SIDE * PREVIEW_REFS * 4:
        return None
    try:
        data = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format != "PNG" or width > PREVIEW_SIDE * PREVIEW_REFS or height > PREVIEW_SIDE:
                return None
            image.load()
            return image.convert("RGB")
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):
        return None


def style_settings(request: Request) -> dict[str, str]:
    """Style-file metadata that brings the request's settings along (the request, minus the style): the web UI
    restores them when the file is uploaded as the style."""
    return {"request": request.replace(style=("(this style file)",)).to_json()}
