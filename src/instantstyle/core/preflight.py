"""Checks that need no model, run the same way by every surface before anything loads.

``check_request``: every file a request names is there and readable (style images and files, content,
mode inputs, masks, further adapters, LoRAs), every blocks spec is well-formed and every model reference
is shaped like one. ``check_runtime``: the request can run as the runtime says (HiDiffusion and a
compiled UNet exclude each other). ``check_blocks``: the blocks specs name blocks the model has, and the
request is one the model's family can make (HiDiffusion, regions, modes, sizes...), read from its denoiser's
config alone (no weights). Bad input is a one-line ``UserError`` before minutes of loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..families import Family, all_families, family_of_denoiser
from ..files.images import MAX_PIXELS, load_image
from ..loading.configs import check_model_folder
from ..loading.hub import (
    check_controlnet_ref,
    check_model_ref,
    checkpoint_family,
    hub_error,
    hub_ref,
    is_local_adapter_ref,
    model_source,
    resolve_adapter_file,
)
from ..loading.runtime import Runtime
from ..modes.hidiffusion_settings import settings_of
from . import csgo
from .adapter import adapter_kind
from .blocks import parse_spec, resolve_blocks
from .embeddings import load_style
from .lora import check_lora_file
from .request import CONTROL_KINDS, Request


def check_request(request: Request, max_pixels: int | None = MAX_PIXELS) -> None:
    """Everything about a request that can be checked without a model (images held to ``max_pixels``, checked from
    their headers before decoding)."""
    for ref in request.style:
        if not ref.path.endswith(".safetensors"):
            load_image(ref.path, "style image", max_pixels)
        else:
            load_style(ref.path)  # a few KB: its kind and shapes checked before any model loads
    if request.content_image is not None:
        load_image(request.content_image, "content image", max_pixels)
    for name in ("image_encoder", "content_text_encoder"):
        folder = getattr(request, name)
        if folder is not None and folder.startswith((".", "/", "~")) and not Path(folder).expanduser().is_dir():
            raise UserError(f"{name.replace('_', ' ')} {folder}: no such folder")
    for spec in (request.blocks, *(use.blocks for use in request.adapters)):
        if spec is not None:  # None: the family's default
            parse_spec(spec)
    check_mode_inputs(request, max_pixels)
    for lora in request.lora:
        check_lora_file(lora.path)
    check_adapter_kind(request)


def check_adapter_kind(request: Request) -> None:
    """What the request asks that its adapter cannot do, from the kind of its adapter file (a local one, or a hub one
    already in the HF cache; read lazily: a CSGO checkpoint is memory-mapped, a safetensors file's names read):
    CSGO's options only with CSGO, and what CSGO cannot do not with it (``csgo.check_request``). No adapter named is
    the family's default, never CSGO; a hub adapter not downloaded yet is checked once it loads."""
    if request.adapter is None:
        csgo.check_not_csgo(request)
        return
    if is_local_adapter_ref(request.adapter):
        path: Path | None = resolve_adapter_file(request.adapter)
    else:
        ref = hub_ref("adapter", request.adapter)
        path = cached_file(ref.repo, ref.file) if ref is not None else None
    if path is None:
        return
    if adapter_kind(path) == "csgo":
        csgo.check_request(request)
    else:
        csgo.check_not_csgo(request)


def cached_file(repo: str, file: str) -> Path | None:
    """A hub file's path in the local HF cache, or ``None`` (never asks the hub)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file)
    return Path(found) if isinstance(found, str) else None


def check_runtime(request: Request, runtime: Runtime) -> None:
    """What the request asks that the runtime excludes: HiDiffusion hooks the UNet that ``--compile`` compiles."""
    if request.hidiffusion and runtime.compile_backend:
        raise UserError("--hidiffusion cannot act on a compiled UNet: drop --compile (or --hidiffusion)")


def check_family(request: Request, family: Family) -> None:
    """What the request asks of the model's family: HiDiffusion only where the family has its settings; restyling
    only where the family has it (not SD3.5/FLUX)."""
    if request.hidiffusion:
        settings_of(family)
    if request.restyle is not None:
        from ..modes.restyle import check_family as check_restyle

        check_restyle(family)


def check_mode_inputs(request: Request, max_pixels: int | None = MAX_PIXELS) -> None:
    """Every image-mode input readable and within ``max_pixels``: init image, mask, composition, regions, further
    adapters and their styles, the control image; the ControlNet and depth model references well-formed."""
    for name, what in (("init_image", "init image"), ("mask", "mask"), ("composition", "composition image"),
                       ("restyle", "photo to restyle")):
        if getattr(request, name) is not None:
            load_image(getattr(request, name), what, max_pixels)
    for region in (*request.regions, *(r for use in request.adapters for r in use.regions)):
        load_image(region, "region mask", max_pixels)
    for use in request.adapters:
        if is_local_adapter_ref(use.path):
            resolve_adapter_file(use.path)  # a local reference: its errors, without touching the hub
        for ref in use.style:
            load_image(ref.path, f"style image of adapter {use.path}", max_pixels)
    if request.control is not None and request.control != "tile":  # tile: CSGO's, on the content image
        source = request.control if request.control not in CONTROL_KINDS else request.control_image
        load_image(source or request.init_image or request.restyle or "", "control image", max_pixels)
    if request.csd is not None and not Path(request.csd).expanduser().exists():
        raise UserError(f"CSD checkpoint {request.csd}: no such file")
    request.check_restyle_prompt()
    if request.caption_model is not None and not request.prompt.strip():
        from .caption import check_caption_model

        check_caption_model(request.caption_model)
    if request.controlnet is not None:
        check_controlnet_ref(request.controlnet)
    if request.depth_model is not None:
        check_model_ref("depth model", request.depth_model)


def model_layers(model: str, single_file_config: str | None = None) -> tuple[Family, list[str]]:
    """(family, injectable layers) of a model from its denoiser's config alone, without weights: cheap enough to
    check blocks specs before loading. A single file without ``single_file_config`` gives its family and no layers
    (they are known only after loading)."""
    family, denoiser = model_denoiser(model, single_file_config)
    return family, family.layers(denoiser) if denoiser is not None else []


def model_denoiser(model: str, single_file_config: str | None = None) -> tuple[Family, Any]:
    """(family, denoiser built on the meta device from its config: no weights) of a model; a single file without
    ``single_file_config`` gives its family and ``None``."""
    from accelerate import init_empty_weights

    family, cls, config = _denoiser_config(model, single_file_config)
    if cls is None:
        return family, None
    try:
        with init_empty_weights():
            return family, cls.from_config(config)
    except Exception as err:  # a config its numbers cannot build (checked for size by loading.configs first)
        first = str(err).splitlines()[0][:160] if str(err) else ""
        raise UserError(f"model {model}: {family.denoiser}/config.json does not describe a {cls.__name__} "
                        f"({type(err).__name__}: {first})") from None


def default_adapter(model: str, single_file_config: str | None = None) -> str:
    """The adapter of a request that names none: its model family's (``Family.default_adapter``), known from the
    hub id of a well-known model (so an offline hint names both downloads at once), else read from the model's
    configs (a model that is not there is a one-line error naming it)."""
    known = [f for f in all_families() if model.lower() in (m.lower() for m in f.known_models)]
    family = known[0] if known else model_family(model, single_file_config)
    if not family.default_adapter:
        raise UserError(f"model {model} ({family.name}): no default IP-Adapter for this family; give --adapter")
    return family.default_adapter


def model_family(model: str, single_file_config: str | None = None) -> Family:
    """The family of a model from its configs (or a single file's tensor names) alone."""
    return _denoiser_config(model, single_file_config)[0]


def _denoiser_config(model: str, single_file_config: str | None) -> tuple[Family, Any, Any]:
    """(family, denoiser class, its config) from the model's configs; (family, None, None) for a single file
    without ``single_file_config``."""
    import diffusers

    source = model_source(model)
    if isinstance(source, Path) and source.is_file():
        if single_file_config is None:
            return checkpoint_family(source), None, None
        source = Path(single_file_config).expanduser()
        if source.is_dir():
            check_model_folder(source, "single-file config")
    try:
        index = diffusers.DiffusionPipeline.load_config(str(source))
        for attr, class_name in dict.fromkeys((f.denoiser, f.denoiser_class) for f in all_families()):
            if list(index.get(attr) or [None, None])[1] == class_name:
                cls = getattr(diffusers, class_name)
                config = cls.load_config(str(source), subfolder=attr)
                break
        else:
            raise UserError(f"model {model}: no denoiser of a supported model family "
                            f"({', '.join(f.name for f in all_families())})")
    except OSError as err:
        raise hub_error("model", model, err) from None
    return family_of_denoiser(class_name, config, f"model {model}"), cls, config


def check_blocks(model: str, specs: Sequence[str | None], single_file_config: str | None = None,
                 request: Request | None = None) -> None:
    """Every blocks spec names blocks the model has, and (given) the request is one the model's family can make
    (``check_family``: HiDiffusion; ``Family.check_request``: regions, modes, sizes...), read from its config (the
    blocks and ``Family.check_request`` are skipped for a bare single file)."""
    family, denoiser = model_denoiser(model, single_file_config)
    if request is not None:
        check_family(request, family)
    if denoiser is None:
        return
    layers = family.layers(denoiser)
    for spec in specs:
        resolve_blocks(spec, layers, family)
    if request is not None:
        family.check_request(request, denoiser)
