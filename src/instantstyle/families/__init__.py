"""Model families: everything that differs between SDXL, SD1.5, SD3.5 and FLUX, in one place each.

A ``Family`` is plain data plus a few functions: which pipeline attribute is the denoiser, how to
recognise the family, its block presets and how attention-layer names group into blocks, its
IP-Adapter attention processor, its ControlNets, which text tower shares the image encoder's CLIP space,
its native size. The core asks ``family_of(pipe)`` / ``family_named(name)`` and never branches on a
family's name. Adding a family is adding one module to this package that defines ``FAMILY`` (found
automatically), plus its test fixtures.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import torch

    from ..core.request import Request

#: Image modes a request can be in (see ``Request.mode``).
MODES = ("text", "img2img", "inpaint")


def cfg_guidance(request: Request) -> dict[str, Any]:
    """The guidance argument of a classifier-free-guided pipeline: ``guidance_scale``."""
    return {"guidance_scale": request.guidance}


@dataclass(frozen=True)
class Family:
    """What one model family is to InstantStyle. Fields are data, or functions of the loaded objects."""

    name: str
    #: The pipeline attribute holding the denoiser (``unet``; ``transformer`` for DiT families) and its class.
    denoiser: str
    denoiser_class: str
    #: Whether a denoiser (its class name and config) belongs to this family; families must not overlap.
    matches: Callable[[str, Mapping[str, Any]], bool]
    #: Whether a single-file checkpoint (its tensor names) is of this family, and the pipeline that loads it.
    matches_checkpoint: Callable[[Sequence[str]], bool]
    text_pipeline: str
    #: Block presets: name -> block names (a block name selects every injectable layer under it).
    presets: Mapping[str, tuple[str, ...]]
    #: The denoiser's layers that take image features, from its attention-processor names, in processor order.
    injectable_layers: Callable[[Iterable[str]], list[str]]
    #: The attention block a layer belongs to, and the top-level block an attention block belongs to.
    attention_block: Callable[[str], str]
    top_block: Callable[[str], str]
    #: diffusers' IP-Adapter processor class for this family (``IPAdapterAttnProcessor2_0``...); its state is
    #: edited in ``processors`` only.
    ip_processor: str
    #: Load IP-Adapter state dicts (``AdapterWeights.state_dict``, one per adapter) into the pipeline's denoiser:
    #: diffusers' ``load_ip_adapter`` with this family's arguments.
    load_adapters: Callable[[Any, Sequence[Mapping[str, Any]]], None]
    #: The diffusers call's image-embedding arguments from (style, negative) per slot, with or without CFG.
    embeds_kwargs: Callable[[Sequence[tuple[torch.Tensor, torch.Tensor]], bool, torch.device, torch.dtype],
                            dict[str, Any]]
    #: A processor for a layer no adapter targets (holds no adapter weights), or ``None`` to keep diffusers'.
    text_only_processor: Callable[[], Any] | None
    #: Whether an IP-Adapter file fits the denoiser: ``None``, or what does not fit.
    adapter_misfit: Callable[[Any, Any], str | None]  # (adapter.AdapterWeights, denoiser)
    #: (tokenizer, text encoder) pipeline attributes that may share the image encoder's CLIP space, for
    #: content subtraction; used when its projection width equals the adapter's. Empty: the user names one.
    content_towers: tuple[tuple[str, str], ...]
    #: ControlNet: the diffusers class, the default per control kind, and whether a loaded one fits the denoiser.
    controlnet_class: str
    default_controlnets: Mapping[str, str]
    controlnet_fits: Callable[[Any, Any], bool]
    #: The default output side of a loaded pipeline (the model's native size).
    native_size: Callable[[Any], int]
    #: Refuse a request the loaded denoiser cannot make (an inpainting checkpoint without a mask...).
    check_request: Callable[[Request, Any], None]
    #: Whether the pipeline runs classifier-free guidance at ``guidance`` (then the negative embeds go first).
    guides: Callable[[Any, float], bool]
    #: The starting noise of one request exactly as its pipeline would draw it, for batching several requests
    #: into one call (``None``: this family's requests always run one by one).
    draw_latents: Callable[[Any, Request, torch.device, torch.dtype], torch.Tensor] | None = None
    #: Text encoding ahead of the call, exactly as the pipeline would encode inside it: (pipeline, prompts,
    #: negative prompts or ``None``, device, with CFG) -> the call's embedding arguments (``prompt_embeds``...), which
    #: replace ``prompt``/``negative_prompt``. ``None``: the pipeline encodes its prompts itself (no text phase).
    encode_prompts: Callable[[Any, list[str], list[str] | None, torch.device, bool], dict[str, Any]] | None = None
    #: Reads an adapter file of a format only this family uses (``path``, its tensors by name) into
    #: ``adapter.AdapterWeights``, or ``None`` when it is not one; h94 files need none.
    adapter_reader: Callable[[Any, Mapping[str, torch.Tensor]], Any] | None = None
    #: Diffusers pipeline class names for (mode, with ControlNet) that ``AutoPipelineFor*`` does not find.
    mode_pipelines: Mapping[tuple[str, bool], str] = field(default_factory=dict)
    #: The blocks spec of a request that names none (``Request.blocks`` is ``None``).
    default_blocks: str = "style"
    #: Hub ids of the image encoders this family's published adapters use, looked for beside the adapter's
    #: repository folder and in the HF cache when the adapter ships none (``hub.find_image_encoder``).
    image_encoders: tuple[str, ...] = ()
    #: How the CFG negative image embedding is made (``embeddings.NEGATIVE_RULES``), as this family's diffusers
    #: pipelines make it from an image.
    negative_image: str = "ip-adapter"
    #: The diffusers call's guidance arguments for a request (``guidance_scale``; FLUX adds ``true_cfg_scale``).
    guidance_kwargs: Callable[[Request], dict[str, Any]] = cfg_guidance
    #: Whether ``Request.true_cfg`` means anything here (real CFG on a guidance-distilled model: FLUX.1-dev).
    takes_true_cfg: bool = False
    #: A line for ``instantstyle blocks`` about the denoiser's blocks the adapter cannot reach, or ``None``.
    blocks_note: Callable[[Any], str | None] | None = None
    #: Output width and height must be multiples of this (default sizes are rounded to it).
    size_multiple: int = 8
    #: The half precision ``--dtype auto`` means on a GPU: bfloat16 for models whose T5 or activations overflow
    #: float16 (SD3.5, FLUX).
    gpu_dtype: str = "float16"
    #: Per-feature data for this family (e.g. ``features["hidiffusion"]``), for features outside the core.
    features: Mapping[str, Any] = field(default_factory=dict)
    #: The IP-Adapter a request without one gets (a hub reference ``org/repo/path``; ``""``: none, it must be named),
    #: so an offline hint names this family's download, not another's.
    default_adapter: str = ""
    #: Hub ids of this family's well-known models: their adapter is known before the model is downloaded.
    known_models: tuple[str, ...] = ()

    def denoiser_of(self, pipe: Any) -> Any:
        """The loaded pipeline's denoiser (its UNet or transformer)."""
        return getattr(pipe, self.denoiser)

    def layers(self, denoiser: Any) -> list[str]:
        """The denoiser's injectable layers (the units a blocks spec resolves to), in processor order."""
        return self.injectable_layers(denoiser.attn_processors)


@cache
def all_families() -> tuple[Family, ...]:
    """Every family module in this package (each defines ``FAMILY``), by module name."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found.append(family)
    return tuple(found)


def family_named(name: str | Family) -> Family:
    """The family of that name (a ``Family`` is returned as is)."""
    if isinstance(name, Family):
        return name
    for family in all_families():
        if family.name == name:
            return family
    raise UserError(f"unknown model family {name!r} ({', '.join(f.name for f in all_families())})")


def _one(found: list[Family], what: str) -> Family:
    if not found:
        names = ", ".join(f.name for f in all_families())
        raise UserError(f"{what}: not a supported model family ({names})")
    if len(found) > 1:
        raise RuntimeError(f"families overlap: {', '.join(f.name for f in found)} all match {what}")
    return found[0]


def family_of_denoiser(class_name: str, config: Mapping[str, Any], what: str = "this model") -> Family:
    """The family of a denoiser, from its class name and config alone (no weights needed)."""
    return _one([f for f in all_families() if f.matches(class_name, config)], what)


def family_of(pipe: Any, what: str | None = None) -> Family:
    """The family of a loaded diffusers pipeline, from its denoiser."""
    found = []
    for family in all_families():
        denoiser = getattr(pipe, family.denoiser, None)
        if denoiser is not None and family.matches(type(denoiser).__name__, denoiser.config):
            found.append(family)
    return _one(found, what or type(pipe).__name__)


def family_of_checkpoint(keys: Sequence[str], what: str) -> Family:
    """The family of a single-file (original-format) checkpoint, from its tensor names."""
    return _one([f for f in all_families() if f.matches_checkpoint(keys)], what)
