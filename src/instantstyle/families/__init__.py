"""Model families: everything that differs between SDXL, SD1.5, SD3.5 and FLUX, in one place each.

A ``Family`` is plain data plus a few functions: which pipeline attribute is the denoiser, how to
recognise the family, its block presets and how attention-layer names group into blocks, its
IP-Adapter attention processor, its ControlNets, which text tower shares the image encoder's CLIP space,
its native size. The core asks ``family_of(pipe)`` / ``family_named(name)`` and never branches on a
family's name.

Adding a family is one module: ``FAMILY = dataclasses.replace(unet.BASE, name=..., matches=..., ...)`` (or
``dit.BASE``), stating only what differs from the UNet (h94 IP-Adapter) or diffusion-transformer conventions. In
this package it is found automatically; from outside it, ``register_family(FAMILY)`` at import time, or an entry
point in the ``instantstyle.families`` group naming the object (then the CLI finds it too).
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


#: The entry-point group another package names its ``Family`` objects in (``pyproject``:
#: ``[project.entry-points."instantstyle.families"] name = "package.module:FAMILY"``).
ENTRY_POINT_GROUP = "instantstyle.families"


def cfg_guidance(request: Request) -> dict[str, Any]:
    """The guidance argument of a classifier-free-guided pipeline: ``guidance_scale``."""
    return {"guidance_scale": request.guidance}


def never(*_: Any) -> bool:
    """A matcher that matches nothing: a base family's, or ``matches_checkpoint`` of a family without single files."""
    return False


@dataclass(frozen=True)
class Family:
    """What one model family is to InstantStyle. Fields are data, or functions of the loaded objects."""

    name: str
    #: The pipeline attribute holding the denoiser (``unet``; ``transformer`` for DiT families) and its class.
    denoiser: str
    denoiser_class: str
    #: Whether a denoiser (its class name and config) belongs to this family; families must not overlap.
    matches: Callable[[str, Mapping[str, Any]], bool]
    #: The diffusers text-to-image pipeline class of the family (every mode is built from it).
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
    #: ControlNet: the diffusers class and whether a loaded one fits the denoiser (defaults: ``default_controlnets``).
    controlnet_class: str
    controlnet_fits: Callable[[Any, Any], bool]
    #: The default output side of a loaded pipeline (the model's native size).
    native_size: Callable[[Any], int]
    #: Refuse a request the loaded denoiser cannot make (an inpainting checkpoint without a mask...).
    check_request: Callable[[Request, Any], None]
    #: Whether the pipeline runs classifier-free guidance at ``guidance`` (then the negative embeds go first).
    guides: Callable[[Any, float], bool]
    #: Whether a single-file checkpoint (its tensor names) is of this family (then ``text_pipeline`` loads it).
    matches_checkpoint: Callable[[Sequence[str]], bool] = never
    #: (tokenizer, text encoder) pipeline attributes that may share the image encoder's CLIP space, for
    #: content subtraction; used when its projection width equals the adapter's. Empty: the user names one.
    content_towers: tuple[tuple[str, str], ...] = ()
    #: The default ControlNet per control kind (``canny``, ``depth``); a kind not here needs ``--controlnet``.
    default_controlnets: Mapping[str, str] = field(default_factory=dict)
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
    #: The family this one narrows (a family from outside the package for some of another's models, e.g. SD2.1 UNets
    #: among SD1.5's): where both match a model, this one is taken. Families that do not refine must not overlap.
    refines: str | None = None

    def denoiser_of(self, pipe: Any) -> Any:
        """The loaded pipeline's denoiser (its UNet or transformer)."""
        return getattr(pipe, self.denoiser)

    def layers(self, denoiser: Any) -> list[str]:
        """The denoiser's injectable layers (the units a blocks spec resolves to), in processor order."""
        return self.injectable_layers(denoiser.attn_processors)


@cache
def _package_families() -> tuple[Family, ...]:
    """Every family module in this package (each defines ``FAMILY``), by module name."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found.append(family)
    return tuple(found)


#: The families registered from outside this package, in the order they came (``register_family``).
_registered: list[Family] = []
_entry_points_read: list[bool] = []


def register_family(family: Family) -> Family:
    """Make a family defined outside this package known to every surface, as a family module here is (returns it:
    ``FAMILY = register_family(replace(unet.BASE, ...))``). Its name must be new; registering it again is a no-op."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a Family, not {type(family).__name__}")
    if family in _registered or family in _package_families():
        return family
    if any(f.name == family.name for f in (*_package_families(), *_registered)):
        raise ValueError(f"a model family named {family.name!r} is already known")
    _registered.append(family)
    return family


def _read_entry_points() -> None:
    """Register the families other installed packages name in the ``instantstyle.families`` entry-point group
    (once per process)."""
    if _entry_points_read:
        return
    _entry_points_read.append(True)
    from importlib.metadata import entry_points

    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            family = point.load()
            register_family(family)
        except Exception as err:  # another package's code: whatever it raised, one line naming it
            raise UserError(f"model family {point.name!r} ({point.value}) of an installed package does not load: "
                            f"{type(err).__name__}: {err}") from None


def all_families() -> tuple[Family, ...]:
    """Every known family: this package's, by module name, then those registered from outside it."""
    _read_entry_points()
    return (*_package_families(), *_registered)


def family_named(name: str | Family) -> Family:
    """The family of that name (a ``Family`` is returned as is)."""
    if isinstance(name, Family):
        return name
    for family in all_families():
        if family.name == name:
            return family
    raise UserError(f"unknown model family {name!r} ({', '.join(f.name for f in all_families())})")


def _one(found: list[Family], what: str) -> Family:
    """The one family that matched: a family another matching one ``refines`` gives way to it."""
    if not found:
        names = ", ".join(f.name for f in all_families())
        raise UserError(f"{what}: not a supported model family ({names})")
    refined = {f.refines for f in found}
    found = [f for f in found if f.name not in refined]
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
