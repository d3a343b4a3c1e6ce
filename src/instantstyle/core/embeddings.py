"""What the style is: CLIP image embeddings of the references, minus the content.

InstantStyle's second idea (paper, sec. 3.2): CLIP's image and text embeddings share one space, so
subtracting the embedding of the content text from the image embedding leaves mostly style. That
needs the text tower *of the same CLIP* as the adapter's image encoder. Patch-feature ("plus")
adapters do not live in that space and get no subtraction. Image encoders are CLIP vision towers
(h94's, XLabs' FLUX adapters) or SigLIP ones (InstantX's SD3.5 adapter), with their own preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from ..errors import UserError
from ..files.atomic import atomic_path
from ..files.images import MAX_PIXELS as MAX_PIXELS  # re-exported: where most callers look for them
from ..files.images import load_image as load_image
from .guards import warn_if_truncated

STYLE_FILE_FORMAT = "instantstyle-style/1"
CLIP_MEAN_RGB = (122, 116, 104)  # CLIP's normalisation mean: padding that normalises to zero
#: The CFG negative image embedding, by rule (``ImageEncoder``s give the encoded ones): IP-Adapter's own
#: (zeros for global adapters, the features of an all-zero input for plus ones, as diffusers' UNet pipelines),
#: ``zeros`` always (diffusers' SD3 pipeline) or the encoding of a black image (XLabs' FLUX adapters, diffusers' FLUX).
NEGATIVE_RULES = ("ip-adapter", "zeros", "black")


@dataclass
class ImageEncoder:
    """The adapter's image encoder (a CLIP or SigLIP vision tower) with its own preprocessing, named for cache
    keys."""

    model: Any  # CLIPVisionModelWithProjection or SiglipVisionModel
    processor: Any  # its image processor
    identity: str

    @property
    def embed_dim(self) -> int:
        """Width of its global image embedding: CLIP's projection, SigLIP's pooled output."""
        config = self.model.config
        return int(getattr(config, "projection_dim", None) or config.hidden_size)


def encoder_classes(path: Path) -> tuple[Any, Any, Any]:
    """(model class, config class, image processor class) of an image encoder folder, from its config.json:
    a CLIP vision tower (or a whole CLIP model, like openai/clip-vit-large-patch14) or a SigLIP one."""
    import transformers

    try:
        model_type = str(json.loads((path / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        raise UserError(f"image encoder {path}: config.json is not readable JSON") from None
    if model_type.startswith("siglip"):
        names = ("SiglipVisionModel", "SiglipVisionConfig", "SiglipImageProcessor")
    elif model_type.startswith("clip") or not model_type:  # h94's folders: CLIPVisionModelWithProjection
        names = ("CLIPVisionModelWithProjection", "CLIPVisionConfig", "CLIPImageProcessor")
    else:
        raise UserError(f"image encoder {path}: a {model_type} model; expected a CLIP or SigLIP vision model")
    return tuple(getattr(transformers, name) for name in names)  # type: ignore[return-value]


def load_image_encoder(path: str | Path, dtype: torch.dtype = torch.float32, weights: bool = True) -> ImageEncoder:
    """Load a CLIP or SigLIP vision tower; preprocessing is its saved processor, else its family's default at its
    size. ``weights=False`` builds it from its config on the meta device (read on first use, see ``memory``)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"image encoder {path}: no config.json (expected a CLIP or SigLIP vision model folder)")
    model_cls, config_cls, processor_cls = encoder_classes(path)
    if weights:
        model = model_cls.from_pretrained(path, dtype=dtype).eval()
    else:
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = model_cls(config_cls.from_pretrained(path)).to(dtype).eval()
    if (path / "preprocessor_config.json").is_file():
        processor = processor_cls.from_pretrained(path)
    else:  # the h94 folders ship none; diffusers then uses CLIP's default at the model's size
        size = model.config.image_size
        square = {"height": size, "width": size}
        processor = processor_cls(size=square) if "Siglip" in processor_cls.__name__ else processor_cls(
            size=size, crop_size=size)
    return ImageEncoder(model, processor, str(path))


@torch.no_grad()
def encode_images(images: Sequence[Image.Image], encoder: ImageEncoder, kind: str) -> torch.Tensor:
    """Encode references: global adapters take ``image_embeds`` (n, D); plus adapters the
    penultimate hidden states (n, tokens, H), exactly as IP-Adapter was trained."""
    model = encoder.model
    pixels = encoder.processor(images=list(images), return_tensors="pt").pixel_values
    pixels = pixels.to(model.device, model.dtype)
    if kind == "global":
        out = model(pixels)
        embeds = getattr(out, "image_embeds", None)  # CLIP's projection; SigLIP's pooled output otherwise
        return (embeds if embeds is not None else out.pooler_output).float()
    return model(pixels, output_hidden_states=True).hidden_states[-2].float()


def fit_square(image: Image.Image, fit: str) -> list[Image.Image]:
    """The square views a reference is encoded from: ``crop`` leaves the encoder's centre crop as it is
    (the original behaviour), ``pad`` pads to a square with CLIP's mean colour (the whole image, nothing
    cut), ``tiles`` gives overlapping square crops along the long side (their embeddings are averaged)."""
    width, height = image.size
    side = min(width, height)
    if fit == "crop" or width == height:
        return [image]
    if fit == "pad":
        return [ImageOps.pad(image, (max(width, height),) * 2, color=CLIP_MEAN_RGB)]
    if fit != "tiles":
        raise UserError(f"unknown style fit {fit!r} (crop, pad, tiles)")
    count = -(-max(width, height) // side)
    starts = [round(i * (max(width, height) - side) / (count - 1)) for i in range(count)]
    boxes = [(s, 0, s + side, side) if width > height else (0, s, side, s + side) for s in starts]
    return [image.crop(box) for box in boxes]


@torch.no_grad()
def encode_reference(image: Image.Image, encoder: ImageEncoder, kind: str, fit: str = "crop") -> torch.Tensor:
    """Encode one reference (1, ...) after fitting it to a square; several views are averaged."""
    return encode_images(fit_square(image, fit), encoder, kind).mean(dim=0, keepdim=True)


@torch.no_grad()
def unconditional_embeds(
    like: torch.Tensor, encoder: ImageEncoder | None, kind: str, rule: str = "ip-adapter"
) -> torch.Tensor:
    """The CFG negative by ``rule`` (see ``NEGATIVE_RULES``): zeros (IP-Adapter's rule for global adapters, and
    ``zeros``), the features of an all-zero input (IP-Adapter's rule for plus adapters), or the encoding of a
    black image (``black``)."""
    if rule not in NEGATIVE_RULES:
        raise ValueError(f"unknown negative rule {rule!r}")
    if rule == "zeros" or (rule == "ip-adapter" and kind == "global"):
        return torch.zeros_like(like)
    if encoder is None:
        raise UserError("this adapter's negative embedding needs the image encoder")
    if rule == "black":
        return encode_images([Image.new("RGB", (64, 64))], encoder, kind)
    size = _input_size(encoder.processor)
    pixels = torch.zeros(1, 3, *size, device=encoder.model.device, dtype=encoder.model.dtype)
    return encoder.model(pixels, output_hidden_states=True).hidden_states[-2].float()


def _input_size(processor: Any) -> tuple[int, int]:
    """(height, width) of the encoder's input: CLIP's centre crop, else (SigLIP) its resize size."""
    size = getattr(processor, "crop_size", None) or processor.size
    return int(size["height"]), int(size["width"])


def blend(embeds: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of several references' embeddings (one row each) into one style."""
    total = float(sum(weights))
    if total <= 0:
        raise UserError("style weights must not all be 0")
    return sum(w / total * e for w, e in zip(weights, embeds, strict=True))  # type: ignore[return-value]


@torch.no_grad()
def text_embeds(text: str, tokenizer: object, text_encoder: torch.nn.Module) -> torch.Tensor:
    """Projected pooled CLIP text embedding (1, D): the text tower's point in the shared space."""
    warn_if_truncated(tokenizer, text, "content prompt")
    ids = tokenizer(  # type: ignore[operator]
        [text], padding="max_length", max_length=tokenizer.model_max_length,  # type: ignore[attr-defined]
        truncation=True, return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device)).text_embeds.float()


@dataclass
class TextTower:
    """A CLIP text tower with projection (``CLIPTextModelWithProjection``) and its tokenizer."""

    tokenizer: Any
    model: Any

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def embed(self, text: str) -> torch.Tensor:
        """The text's point in the shared CLIP space (1, D), as content subtraction computes it."""
        return text_embeds(text, self.tokenizer, self.model)


def has_clip_text_tower(folder: Path) -> bool:
    """Whether a model folder is a whole CLIP model (both towers and a tokenizer), like
    openai/clip-vit-large-patch14: then its text tower shares the image tower's space."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "clip" and "text_config" in config
            and any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")))


def load_text_tower(
    path: str | Path, subfolder: str | None = None, tokenizer_subfolder: str | None = None,
    dtype: torch.dtype = torch.float32, width: int | None = None,
) -> TextTower:
    """Load a CLIP text tower: a folder with the model and its tokenizer (``--content-text-encoder``), or
    a diffusers model folder's ``text_encoder_2`` / ``tokenizer_2`` (``subfolder``, ``tokenizer_subfolder``).
    The one loader of user-named text towers: anything but a complete CLIP text model with projection and its
    tokenizer, or (``width``) one whose projection is not the image encoder's width, is a ``UserError``."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"text encoder {folder}: no such folder")
    model_dir = folder / subfolder if subfolder else folder
    tokenizer_dir = folder / (tokenizer_subfolder or subfolder or "")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"text encoder {model_dir}: no config.json (expected a CLIPTextModelWithProjection folder)")
    if not any((tokenizer_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise UserError(f"text encoder {folder}: no CLIP tokenizer (tokenizer.json or vocab.json) in {tokenizer_dir}")
    # transformers fills weights missing from the file with random ones: a vision tower, or a text model
    # without its projection, would load "fine" and score noise
    loaded: Any = CLIPTextModelWithProjection.from_pretrained(
        folder, subfolder=subfolder or "", dtype=dtype, output_loading_info=True
    )
    model, info = loaded
    if info["missing_keys"]:
        raise UserError(f"text encoder {model_dir}: not a CLIP text model with projection "
                        f"({len(info['missing_keys'])} weights missing, e.g. {sorted(info['missing_keys'])[0]})")
    if width is not None and model.config.projection_dim != width:
        raise UserError(f"content text encoder {path} gives {model.config.projection_dim}-d embeddings; "
                        f"the adapter's image encoder {width}")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer_subfolder or subfolder or "")
    return TextTower(tokenizer, model.eval())


def subtract_content(style: torch.Tensor, content: torch.Tensor, content_scale: float) -> torch.Tensor:
    """InstantStyle's content subtraction: ``style - content_scale * content`` in CLIP space."""
    if style.shape[-1] != content.shape[-1]:
        raise UserError(
            f"content embedding has {content.shape[-1]} dimensions but the style embedding {style.shape[-1]}: "
            "the content must come from the same CLIP as the adapter's image encoder"
        )
    return style - content_scale * content


def image_hash(path: str | Path) -> str:
    """Content hash of an image file (cache key part: the same bytes are the same style)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class StyleFile:
    """A saved style: the blended reference embedding (before content subtraction) and its origin."""

    embeds: torch.Tensor
    negative: torch.Tensor
    kind: str
    encoder: str
    metadata: dict[str, str]


def save_style(path: str | Path, style: StyleFile) -> Path:
    """Write a style file (``.safetensors`` with JSON-able metadata) usable without its image."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"style file {path}: must end in .safetensors")
    meta = {"format": STYLE_FILE_FORMAT, "kind": style.kind, "encoder": style.encoder, **style.metadata}
    tensors = {"embeds": style.embeds.contiguous().cpu(), "negative": style.negative.contiguous().cpu()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    return path


def load_style(path: str | Path) -> StyleFile:
    """Read a style file written by :func:`save_style`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"style file {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a bad file
        raise UserError(f"style file {path}: not a readable safetensors file ({type(err).__name__})") from None
    if meta.get("format") != STYLE_FILE_FORMAT or set(tensors) != {"embeds", "negative"}:
        raise UserError(f"style file {path}: not an instantstyle style file")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise UserError(f"style file {path}: holds values that are not finite numbers (NaN or inf)")
    kind, encoder = meta.pop("kind", None), meta.pop("encoder", None)
    if kind not in STYLE_RANKS or not isinstance(encoder, str):
        raise UserError(f"style file {path}: not an instantstyle style file (adapter kind {kind!r})")
    check_style_shapes(f"style file {path}", kind, tensors["embeds"], tensors["negative"])
    meta.pop("format")
    return StyleFile(tensors["embeds"].float(), tensors["negative"].float(), kind, encoder, meta)


#: A style file's embeddings: one reference, (1, width) for a global adapter, (1, tokens, width) for a plus one.
STYLE_RANKS = {"global": 2, "plus": 3}


def check_style_shapes(where: str, kind: str, embeds: torch.Tensor, negative: torch.Tensor) -> None:
    """The shapes a style file of ``kind`` can hold (a crafted one failed deep in attention, after the model loaded):
    one row, the rank of the kind, no empty dimension, and a negative of the same shape."""
    shape = tuple(embeds.shape)
    if len(shape) != STYLE_RANKS[kind] or shape[0] != 1 or 0 in shape:
        wanted = "(1, width)" if kind == "global" else "(1, tokens, width)"
        raise UserError(f"{where}: holds embeddings of shape {shape}; a {kind} style is {wanted}")
    if tuple(negative.shape) != shape:
        raise UserError(f"{where}: holds a negative of shape {tuple(negative.shape)} for embeddings of shape {shape}")
