"""CSGO: content and style composed by two trained adapters on SDXL with a tile ControlNet.

Xing et al., "CSGO: Content-Style Composition in Text-to-Image Generation" (arXiv 2408.16766); the authors' inference
is ``ip_adapter.CSGO`` with ``infer/infer_CSGO.py`` (instantX-research/CSGO). What it does, and this module with
``csgo_attention`` reproduces on diffusers 0.42 (pixel for pixel on fixtures, ``tests/test_csgo.py``):

1. **Tokens.** Two IP-Adapter-Plus resamplers read the penultimate hidden states of h94's SDXL image encoder
   (ViT-bigG): 4 content tokens from the content image (resized to the output size), 16 or 32 style tokens from the
   style image; their CFG negatives are the resamplers' outputs for all-zero hidden states. They are appended to the
   text embeddings: ``[text | content | style]``, ``[negative text | negative content | negative style]``.
2. **Where they act** (``BLOCKS``, ``controlnet_BLOCKS``): the style tokens in every cross-attention layer of the
   UNet's up blocks and of the ControlNet's down blocks, at the style scale (``Request.scale``, 1.0). The content
   tokens: ``BLOCKS`` names the UNet's down blocks, but the released ``set_ip_adapter`` then gives those layers a
   text-only processor (its ``selected = True`` is commented out in the UNet's loop, live in the ControlNet's), so
   the content tokens reach no layer and the authors' ``content_scale`` changes nothing. Here
   ``Request.content_adapter_scale`` defaults to 0, which is that behaviour; above 0 the content tokens go into the
   down blocks with the checkpoint's weights for those layers, as the ControlNet loop would (checked against the
   authors' code with that line restored).
3. **The rest of the recipe**: the content image drives a tile ControlNet (TTPlanet's SDXL tile, conditioning
   0.6, weights overwritten by the checkpoint's ``controlnet_adapter_modules`` where it holds them); guidance 10;
   the authors' negative prompt; the output size from the content image by ``resize_content`` (1024 px on the short
   side, at most 1024 on the long, multiples of 16). Text-driven synthesis (no content image) conditions on a black
   image, as the authors' demo does.

Better than the original: only the layers the request uses hold weights (the content resampler and layers only
while content is injected), the image encoder runs once per image (embeddings cached, the encoder released as
instantstyle's own adapters), the checkpoint is read memory-mapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import UserError
from . import csgo_attention as attention
from .request import MIN_SIZE
from .weights import AdapterWeights, read_weights

if TYPE_CHECKING:
    from .request import Request

#: The checkpoint's groups (``torch.save`` dict keys; ``group.key`` in a flat safetensors file).
GROUPS = ("content_image_proj", "style_image_proj", "ip_adapter", "controlnet_adapter_modules")
#: ``ip_utils.BLOCKS`` and ``controlnet_BLOCKS``: where each kind of token goes, by block prefix.
UNET_BLOCKS = {"content": ("down_blocks",), "style": ("up_blocks",)}
CONTROLNET_BLOCKS: dict[str, tuple[str, ...]] = {"content": (), "style": ("down_blocks",)}
#: The authors' negative prompt (``infer_CSGO.py``), the default of a CSGO request.
NEGATIVE_PROMPT = ("text, watermark, lowres, low quality, worst quality, deformed, glitch, low contrast, noisy, "
                   "saturation, blurry")
#: A CSGO request's defaults where it says nothing (``infer_CSGO.py``): guidance 10, the tile ControlNet at 0.6.
GUIDANCE, CONTROL, CONTROL_SCALE = 10.0, "tile", 0.6
#: h94's SDXL image encoder (ViT-bigG), which CSGO's resamplers read; InstantX/CSGO ships no encoder.
IMAGE_ENCODER = "h94/IP-Adapter/sdxl_models/image_encoder"
#: ``resize_content``: the content image's short side is brought to 1024 px, its long side held to 1024.
CONTENT_SHORT_SIDE, CONTENT_LONG_SIDE, CONTENT_MULTIPLE = 1024, 1024, 16
_RESAMPLER_DEPTH = 4  # CSGO.init_proj builds depth 4, 12 heads of 64 (diffusers infers heads from to_q)
_RESAMPLER_KEYS = ("latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
                   "norm_out.weight", "norm_out.bias", *(
                       f"layers.{i}.{part}" for i in range(_RESAMPLER_DEPTH) for part in (
                           "0.norm1.weight", "0.norm1.bias", "0.norm2.weight", "0.norm2.bias", "0.to_q.weight",
                           "0.to_kv.weight", "0.to_out.weight", "1.0.weight", "1.0.bias", "1.1.weight",
                           "1.3.weight")))
_LAYER_KEY = re.compile(r"(\d+)\.(to_k_ip|to_v_ip)\.weight")
_CONTROLNET_LAYER_KEY = re.compile(r"(.+)\.processor\.(to_k_ip|to_v_ip)\.weight")


def is_csgo(state: Any) -> bool:
    """Whether a read checkpoint (groups of tensors) is CSGO's: it has a style or content resampler."""
    return isinstance(state, dict) and any(group in state for group in GROUPS[:2])


def has_csgo_names(names: Iterable[str]) -> bool:
    """Whether a file's tensor names (``GROUP.rest``, as a safetensors header lists them) are a CSGO checkpoint's."""
    return is_csgo({name.partition(".")[0]: None for name in names})


def read_csgo(path: Path, state: Mapping[str, Any]) -> AdapterWeights:
    """A CSGO checkpoint, checked whole (both resamplers complete and alike, key/value pairs complete and as wide as
    the resamplers' output, ControlNet layers present): what it is and its token counts, read from its weights."""
    def refuse(why: str) -> UserError:
        return UserError(f"CSGO checkpoint {path}: {why}")

    for group in GROUPS:
        if not isinstance(state.get(group), dict) or not state[group]:
            raise refuse(f"no {group} weights (truncated, or not a CSGO checkpoint)")
    dims = []
    for group in GROUPS[:2]:
        proj = state[group]
        missing = [k for k in _RESAMPLER_KEYS if k not in proj]
        if missing:
            raise refuse(f"its {group} resampler lacks {len(missing)} weights (e.g. {missing[0]}): truncated")
        dims.append((int(proj["proj_in.weight"].shape[1]), int(proj["proj_out.weight"].shape[0]),
                     int(proj["latents"].shape[1])))
    (embed, cross, content_tokens), (style_embed, style_cross, style_tokens) = dims
    if (embed, cross) != (style_embed, style_cross):
        raise refuse(f"its resamplers disagree (content {embed}->{cross}, style {style_embed}->{style_cross})")
    layers = _pairs(state["ip_adapter"], _LAYER_KEY, refuse)
    controlnet = _pairs({k: v for k, v in state["controlnet_adapter_modules"].items() if ".processor." in k},
                        _CONTROLNET_LAYER_KEY, refuse)
    if not controlnet:
        raise refuse("no ControlNet layer weights (controlnet_adapter_modules holds no ...processor.to_k_ip)")
    for name, (key, value) in {**layers, **controlnet}.items():
        if key.shape[1] != cross or key.shape != value.shape:
            raise refuse(f"layer {name}: key/value weights {tuple(key.shape)}/{tuple(value.shape)} do not take "
                         f"{cross}-wide tokens")
    return AdapterWeights(str(path), "csgo", embed, cross, len(layers), dict(state),
                          tokens=(content_tokens, style_tokens))


def _pairs(group: Mapping[str, Any], pattern: re.Pattern[str], refuse: Any) -> dict[str, tuple[Any, Any]]:
    """(to_k_ip, to_v_ip) per layer name or index; a key without its partner, or a foreign key, is refused."""
    found: dict[str, dict[str, Any]] = {}
    for key, tensor in group.items():
        match = pattern.fullmatch(key)
        if match is None:
            raise refuse(f"unexpected key {key!r} among its layer weights")
        found.setdefault(match.group(1), {})[match.group(2)] = tensor
    for name, pair in found.items():
        if len(pair) != 2:
            raise refuse(f"layer {name} has only {', '.join(pair)} (truncated)")
    return {name: (pair["to_k_ip"], pair["to_v_ip"]) for name, pair in found.items()}


def layer_weights(weights: AdapterWeights, unet: Any, role: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The UNet layers of ``role`` (content: down blocks, style: up blocks) with their (to_k_ip, to_v_ip) from the
    checkpoint's ``ip_adapter`` (numbered by position in ``unet.attn_processors``, as the authors' ``ModuleList``)."""
    pairs = _pairs(weights.state_dict["ip_adapter"], _LAYER_KEY, lambda why: UserError(why))
    found = {}
    for index, name in enumerate(unet.attn_processors):
        layer = name.removesuffix(".processor")
        if layer.endswith("attn2") and layer.startswith(UNET_BLOCKS[role]) and str(index) in pairs:
            found[layer] = pairs[str(index)]
    return found


def controlnet_weights(weights: AdapterWeights, controlnet: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ControlNet's own weights the checkpoint overrides, its style layers' (to_k_ip, to_v_ip))."""
    group = weights.state_dict["controlnet_adapter_modules"]
    own = {k: v for k, v in group.items() if ".processor." not in k}
    pairs = _pairs({k: v for k, v in group.items() if ".processor." in k}, _CONTROLNET_LAYER_KEY,
                   lambda why: UserError(why))
    style = {layer: pair for layer, pair in pairs.items() if layer.startswith(CONTROLNET_BLOCKS["style"])}
    return own, style


def misfit(weights: AdapterWeights, unet: Any) -> str | None:
    """What of a CSGO checkpoint does not fit this UNet (its text width, its style layers), or ``None``."""
    want = unet.config.cross_attention_dim
    if weights.cross_attention_dim != want:
        return f"its tokens are {weights.cross_attention_dim} wide, the model's text {want}"
    style = [layer for layer in attention.cross_attention_layers(unet) if layer.startswith(UNET_BLOCKS["style"])]
    held = layer_weights(weights, unet, "style")
    if len(held) != len(style):
        return f"it holds {len(held)} of the model's {len(style)} style (up-block) cross-attention layers: truncated?"
    for layer, (key, _) in held.items():
        hidden = unet.get_submodule(layer).to_q.out_features
        if key.shape[0] != hidden:
            return f"layer {layer} is {key.shape[0]} wide, the model's {hidden}"
    return None


def check_fits(weights: AdapterWeights, family: Any, unet: Any, model: str) -> None:
    """Refuse a CSGO checkpoint on a model it was not trained for, in one line: a family without the ``csgo`` feature
    (SDXL has it; Kolors' UNet is SDXL's but reads ChatGLM's wider text), or a UNet whose text width or style layers
    differ (``unet`` may be built on the meta device from the model's config; ``None``: not known yet)."""
    if not family.features.get("csgo"):
        why: str | None = f"a {family.name} model"
    elif unet is None:
        return
    elif not hasattr(unet, "attn_processors") or getattr(unet.config, "cross_attention_dim", None) is None:
        why = f"{type(unet).__name__} has no UNet cross-attention"
    else:
        why = misfit(weights, unet)
    if why is not None:
        raise UserError(f"CSGO checkpoint {weights.path} does not fit model {model} ({why}); CSGO is trained for "
                        "SDXL")


def blocks_table(unet: Any, weights: AdapterWeights) -> list[tuple[str, str, int, str]]:
    """(model, attention block, cross-attention layers, which tokens it takes) for ``instantstyle blocks``: the
    UNet's down blocks (content, only with ``--content-adapter-scale`` above 0 and when the checkpoint holds them),
    its up blocks (style), and the ControlNet's down blocks (style; a ControlNet copies the UNet's down blocks)."""
    content = bool(layer_weights(weights, unet, "content"))
    counts: dict[str, int] = {}
    for layer in attention.cross_attention_layers(unet):
        block = layer.split(".transformer_blocks.")[0]
        counts[block] = counts.get(block, 0) + 1
    rows = []
    for block, count in counts.items():
        if block.startswith(UNET_BLOCKS["style"]):
            rows.append(("unet", block, count, "style (--scale)"))
        elif block.startswith(UNET_BLOCKS["content"]):
            rows.append(("unet", block, count, "content (--content-adapter-scale; 0 by default, as the authors' "
                         "code)" if content else "none (the checkpoint holds no content layers)"))
        else:
            rows.append(("unet", block, count, "none (text only)"))
    for block, count in counts.items():
        if block.startswith(CONTROLNET_BLOCKS["style"]):
            rows.append(("controlnet", block, count, "style (--scale)"))
    return rows


def content_size(width: int, height: int) -> tuple[int, int]:
    """``resize_content``: the output size for a content image of ``width`` x ``height`` (short side to 1024, long
    side at most 1024, both floored to multiples of 16)."""
    short, long = CONTENT_SHORT_SIDE, CONTENT_LONG_SIDE
    if width < height:
        w, h = (short, int(height * short / width)) if width < short else (width, height)
    else:
        w, h = (int(width * short / height), short) if height < short else (width, height)
    if max(w, h) > long:
        factor = long / max(w, h)
        w, h = int(w * factor), int(h * factor)
    return w // CONTENT_MULTIPLE * CONTENT_MULTIPLE, h // CONTENT_MULTIPLE * CONTENT_MULTIPLE


def content_image(request: Request, max_pixels: int | None) -> Image.Image:
    """The content image at the output size (PIL's default filter, as ``resize_content``), or black without one
    (text-driven synthesis, as the authors' demo)."""
    from ..files.images import load_image

    assert request.width is not None and request.height is not None
    size = (request.width, request.height)
    if request.content_image is None:
        return Image.new("RGB", size)
    return load_image(request.content_image, "content image", max_pixels).resize(size, Image.Resampling.BICUBIC)


def complete(request: Request, native: int, max_pixels: int | None) -> Request:
    """A CSGO request's defaults (guidance 10, the tile ControlNet at 0.6, the authors' negative prompt) and size
    (``content_size`` of the content image; the model's native size without one)."""
    from ..files.images import image_size

    changes: dict[str, Any] = {}
    if request.guidance is None:
        changes["guidance"] = GUIDANCE
    if request.control is None:
        changes["control"] = CONTROL
    if request.control_scale is None:
        changes["control_scale"] = CONTROL_SCALE
    if request.negative_prompt is None:
        changes["negative_prompt"] = NEGATIVE_PROMPT
    if request.width is None or request.height is None:
        size = (native, native)
        if request.content_image is not None:
            shape = image_size(request.content_image, "content image", max_pixels)
            size = content_size(*shape)
            if min(size) < MIN_SIZE:
                raise UserError(f"content image {request.content_image} ({shape[0]}x{shape[1]}) gives a "
                                f"{size[0]}x{size[1]} output by CSGO's size rule; pass --width/--height")
        changes["width"], changes["height"] = request.width or size[0], request.height or size[1]
    return request.replace(**changes) if changes else request


def check_request(request: Request) -> None:
    """What a CSGO request cannot ask: its blocks are trained in, its content is an image, and it is text-to-image
    with its own tile ControlNet and one main style (a one-line ``UserError`` naming the option)."""
    refused = [
        (request.blocks is not None, "--blocks: CSGO's blocks are trained in (content: down blocks, style: up blocks)"),
        (request.content_prompt is not None, "--content-prompt: CSGO takes the content as an image (--content-image)"),
        (request.init_image is not None or request.mask is not None, "--init-image/--mask: CSGO is text-to-image "
         "with the content image in its tile ControlNet (--content-image)"),
        (request.restyle is not None, "--restyle: CSGO restyles with --content-image (its tile ControlNet and content "
         "tokens)"),
        (request.control not in (None, CONTROL), f"--control {request.control}: CSGO runs its tile ControlNet on the "
         "content image (--control tile)"),
        (request.control_image is not None, "--control-image: CSGO's ControlNet takes the content image "
         "(--content-image)"),
        (request.composition is not None, "--composition"),
        (bool(request.regions), "--region"),
        (bool(request.adapters), "further adapters"),
        ((request.style_start, request.style_end) != (0.0, 1.0), "--style-start/--style-end"),
        (request.hidiffusion, "--hidiffusion"),
    ]
    for bad, what in refused:
        if bad:
            raise UserError(f"not with a CSGO checkpoint: {what}")


def check_not_csgo(request: Request) -> None:
    """What only a CSGO request may ask (another adapter would ignore it), and the tile ControlNet's image, which only
    CSGO finds without being told (its content image, or black)."""
    if request.content_adapter_scale:
        raise UserError("--content-adapter-scale is for CSGO checkpoints (content tokens); this adapter has none")
    if request.caption_model is not None and request.restyle is None:
        raise UserError("--caption makes the prompt from the photo to restyle (--restyle PHOTO), or from the content "
                        "image with a CSGO checkpoint; this adapter is not one")
    if request.control == CONTROL and not (request.control_image or request.init_image or request.restyle):
        raise UserError("--control tile needs --control-image IMAGE (or --init-image)")


#: IP-Adapter Plus's resampler (the authors' ``Resampler``) by the names of diffusers' ``IPAdapterPlusImageProjection``:
#: per layer, attention (``0``: its two norms, query, key-value, output) then feed-forward (``1``: norm, in, out).
RESAMPLER_NAMES = (
    (re.compile(r"layers\.(\d+)\.0\.norm1\."), r"layers.\1.ln0."),
    (re.compile(r"layers\.(\d+)\.0\.norm2\."), r"layers.\1.ln1."),
    (re.compile(r"layers\.(\d+)\.0\.to_q\."), r"layers.\1.attn.to_q."),
    (re.compile(r"layers\.(\d+)\.0\.to_out\."), r"layers.\1.attn.to_out.0."),
    (re.compile(r"layers\.(\d+)\.1\.0\."), r"layers.\1.ff.0."),
    (re.compile(r"layers\.(\d+)\.1\.1\."), r"layers.\1.ff.1.net.0.proj."),
    (re.compile(r"layers\.(\d+)\.1\.3\."), r"layers.\1.ff.1.net.2."),
)
KEY_VALUE = re.compile(r"layers\.(\d+)\.0\.to_kv\.weight")


def projection(unet: Any, group: Mapping[str, torch.Tensor]) -> Any:
    """A resampler as diffusers' ``IPAdapterPlusImageProjection`` (CSGO's resamplers are IP-Adapter Plus's, heads of
    64), its sizes read from the weights, on the UNet's device and dtype. The authors' fused key-value weight is
    diffusers' key and value, in that order."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    sizes = ("latents", "proj_in.weight", "proj_out.weight", "layers.0.0.to_q.weight")
    if missing := [name for name in sizes if name not in group]:
        raise UserError(f"CSGO's resampler is not IP-Adapter Plus's: it has no {', '.join(missing)}")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in group.items():
        if (kv := KEY_VALUE.fullmatch(name)) is not None:
            state[f"layers.{kv[1]}.attn.to_k.weight"], state[f"layers.{kv[1]}.attn.to_v.weight"] = tensor.chunk(2)
            continue
        for pattern, new in RESAMPLER_NAMES:
            name = pattern.sub(new, name)
        state[name] = tensor
    latents = group["latents"]
    depth = len({name.split(".")[1] for name in group if name.startswith("layers.")})
    with torch.device("meta"):
        module = IPAdapterPlusImageProjection(
            embed_dims=group["proj_in.weight"].shape[1], output_dims=group["proj_out.weight"].shape[0],
            hidden_dims=latents.shape[2], depth=depth, heads=group["layers.0.0.to_q.weight"].shape[0] // 64,
            num_queries=latents.shape[1])
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # a file whose resampler is not IP-Adapter Plus's
        raise UserError(f"CSGO's resampler is not IP-Adapter Plus's: {str(err).splitlines()[0]}") from None
    return module.to(unet.device, unet.dtype).requires_grad_(False).eval()


@dataclass
class CsgoAdapter:
    """A CSGO checkpoint in a pipeline: processors in the UNet (and each ControlNet it runs with), its resamplers,
    and which parts are resident (the content parts only once a request injects content, or with all weights kept)."""

    weights: AdapterWeights  # what the file is (its tensors are read again when a part is needed)
    style_projection: Any
    content_projection: Any | None = None
    _controlnets: list[Any] = field(default_factory=list, repr=False)
    _negatives: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def attach(cls, unet: Any, weights: AdapterWeights, content: bool) -> CsgoAdapter:
        """Set CSGO's processors in the UNet with the style layers' weights (and, ``content``, the content layers'
        and resampler) and build its style resampler."""
        device, dtype = unet.device, unet.dtype
        processors = attention.set_processors(unet, *weights.tokens)
        attention.hold(processors, "style", layer_weights(weights, unet, "style"), device, dtype)
        adapter = cls(replace(weights, state_dict={}), projection(unet, weights.state_dict["style_image_proj"]))
        if content:
            adapter._hold_content(unet, weights, required=False)
        return adapter

    def _hold_content(self, unet: Any, weights: AdapterWeights, required: bool = True) -> None:
        held = layer_weights(weights, unet, "content")
        if not held:
            if not required:
                return
            raise UserError(f"CSGO checkpoint {weights.path}: no content-layer (down-block) weights, so no content "
                            "tokens can be injected; use --content-adapter-scale 0")
        attention.hold(attention.csgo_processors(unet), "content", held, unet.device, unet.dtype)
        self.content_projection = projection(unet, weights.state_dict["content_image_proj"])

    def need_content(self, unet: Any) -> None:
        """Read the content resampler and layers from the file when a request first injects content."""
        if self.content_projection is None:
            self._hold_content(unet, reread(self.weights))

    def controlnet(self, controlnet: Any, unet: Any) -> None:
        """Make a ControlNet CSGO's (once): its own weights where the checkpoint overrides them, CSGO processors in
        its cross-attention layers with the style layers' weights."""
        if any(controlnet is done for done in self._controlnets):
            return
        own, style = controlnet_weights(reread(self.weights), controlnet)
        mine = controlnet.state_dict()
        known = {k: v for k, v in own.items() if k in mine}
        for key, value in known.items():
            if value.shape != mine[key].shape:
                raise UserError(f"CSGO checkpoint {self.weights.path}: its ControlNet weight {key} is "
                                f"{tuple(value.shape)}, this ControlNet's {tuple(mine[key].shape)}")
        controlnet.load_state_dict(known, strict=False)  # as the authors' load_state_dict(strict=False)
        processors = attention.set_processors(controlnet, *self.weights.tokens)
        wanted = [layer for layer in processors if layer.startswith(CONTROLNET_BLOCKS["style"])]
        if sorted(style) != sorted(wanted):
            raise UserError(f"CSGO checkpoint {self.weights.path}: it holds {len(style)} ControlNet style layers, "
                            f"this ControlNet has {len(wanted)} (a ControlNet of another shape?)")
        attention.hold(processors, "style", style, controlnet.device, controlnet.dtype)
        self._controlnets.append(controlnet)

    def scales_applied(self, request: Request, models: list[Any]) -> AbstractContextManager[None]:
        """The request's content and style scales in every CSGO layer of ``models`` (UNet, ControlNet) for the block,
        as before after it."""
        return attention.scales_applied(models, request.content_adapter_scale, request.scale)

    def tokens(self, hidden: torch.Tensor | None, role: str, device: torch.device, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, CFG negative) of ``role`` for encoder hidden states (1, n, width): the resampler's output, and
        its output for zeros. Without hidden states (content not injected) zeros of the right shape: every layer
        cuts those tokens off unread."""
        count = self.weights.tokens[0 if role == "content" else 1]
        projection = self.content_projection if role == "content" else self.style_projection
        if hidden is None or projection is None:
            zeros = torch.zeros(1, count, self.weights.cross_attention_dim, device=device, dtype=dtype)
            return zeros, zeros
        with torch.no_grad():
            hidden = hidden.to(device, dtype)
            if role not in self._negatives:
                self._negatives[role] = projection(torch.zeros_like(hidden))
            return projection(hidden), self._negatives[role]

    def resident(self) -> list[Any]:
        """The resamplers held (for memory accounting and placement)."""
        return [p for p in (self.style_projection, self.content_projection) if p is not None]


def reread(weights: AdapterWeights) -> AdapterWeights:
    """The checkpoint's tensors again (memory-mapped for a ``.bin``), for a part not kept resident."""
    path = Path(weights.path)
    return read_csgo(path, read_weights(path)[0])


def with_tokens(text: dict[str, Any], content: tuple[torch.Tensor, torch.Tensor],
                style: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The call's text embeddings with CSGO's tokens appended: ``[text | content | style]`` (the negative with the
    negatives), one row per prompt as the text (the pipeline repeats both per image)."""
    out = dict(text)
    for name, index in (("prompt_embeds", 0), ("negative_prompt_embeds", 1)):
        embeds = text.get(name)
        if embeds is not None:
            rows = embeds.shape[0]
            parts = [part[index].expand(rows, -1, -1).to(embeds.dtype) for part in (content, style)]
            out[name] = torch.cat([embeds, *parts], dim=1)
    return out
