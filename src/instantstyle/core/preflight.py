"""The one validation entry point, ``check(request, runtime, model)``: every surface calls it once per request.

It checks, in this order, and returns what it computed (``Checked``) for the loader and the plan to reuse:

1. the request's files (``check_request``): every file it names is there and readable within the runtime's pixel
   cap (style images and files, content, mode inputs, masks, further adapters, LoRAs), every blocks spec is
   well-formed and every model reference is shaped like one;
2. the runtime: the request can run as it says (HiDiffusion and a compiled UNet exclude each other);
3. with a ``model`` (a reference, whose configs are read now without weights, the hub asked once; or the loaded
   pipeline's ``ModelInfo``): its family can make the request (HiDiffusion, regions, modes, sizes...), every blocks
   spec names blocks it has, resolved once into the request's slots (``routing.slots``).

Bad input is a one-line ``UserError``, before minutes of loading where the surface checks before it loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    require_hub,
    resolve_adapter_file,
)
from ..loading.runtime import Runtime
from ..modes.hidiffusion_settings import settings_of
from . import csgo
from .adapter import adapter_kind
from .blocks import Slot, parse_spec, resolve_blocks
from .embeddings import load_style
from .lora import check_lora_file
from .request import CONTROL_KINDS, Request
from .routing import adapter_layers, slots


@dataclass(frozen=True)
class ModelInfo:
    """What the checks need of a model: its family and its denoiser (built on the meta device from its config, or
    the loaded one; ``None`` for a single file without configs, known only once loaded)."""

    family: Family
    denoiser: Any = None
    adapter: str | None = None  # a loaded pipeline's adapter file: what a request naming none runs with

    @property
    def layers(self) -> list[str] | None:
        return self.family.layers(self.denoiser) if self.denoiser is not None else None


@dataclass(frozen=True)
class Checked:
    """A request that passed ``check``, with what the checks computed: the model they were made against (``None``:
    files and runtime only), the request's slots (``None``: the layers are not known yet) and the layers the main
    adapter's slots and every other blocks spec checked name (the weights a pruned load keeps), and the adapter."""

    request: Request
    runtime: Runtime
    model: ModelInfo | None = None
    slots: tuple[Slot, ...] | None = None
    keep: frozenset[str] | None = None
    adapter: str | None = None  # the request's adapter, or (checked against a model reference) its family's own


def check(request: Request, runtime: Runtime, model: ModelInfo | str | None = None,
          specs: Sequence[str | None] = ()) -> Checked:
    """Check ``request`` as ``runtime`` will run it (see the module docstring); with ``model`` (a model reference or
    a ``ModelInfo``) also against the model, and ``specs``, further blocks specs the surface will use with it (a
    sweep's rows), are resolved too."""
    check_request(request, runtime.max_pixels)
    if request.hidiffusion and runtime.compile_backend:
        raise UserError("--hidiffusion cannot act on a compiled UNet: drop --compile (or --hidiffusion)")
    if model is None:
        if request.adapter is not None:  # else the model's: checked against it (``complete``)
            check_adapter_kind(request, request.adapter)
        return Checked(request, runtime)
    adapter = request.adapter
    if isinstance(model, str):
        adapter = adapter or default_adapter(model, runtime.single_file_config)  # no adapter: the family's own
        config = runtime.single_file_config if Path(model).expanduser().is_file() else None
        require_hub(("model", model), ("adapter", adapter), ("image encoder", request.image_encoder),
                    ("single-file config", config))  # what is missing, in one line, without waiting
        model = model_info(model, runtime.single_file_config)
    check_adapter_kind(request, adapter or model.adapter)
    return against(Checked(request, runtime, adapter=adapter), model, specs)


def against(checked: Checked, model: ModelInfo, specs: Sequence[str | None] = ()) -> Checked:
    """``checked`` (its files and runtime checked) checked against ``model`` too: the family's checks, the blocks
    specs resolved (the request's into its slots)."""
    request, family = checked.request, model.family
    if request.hidiffusion:
        settings_of(family)  # a family without it is refused before anything changes
    if request.restyle is not None:  # restyling only where the family has it (not SD3.5/FLUX)
        from ..modes.restyle import check_family as check_restyle

        check_restyle(family)
    layers = model.layers
    if layers is None:  # a bare single file: its layers are known once it is loaded
        return Checked(request, checked.runtime, model, adapter=checked.adapter)
    main = resolve_blocks(request.blocks, layers, family, request.scale)
    keep = set(main)
    for spec in specs:
        if spec != request.blocks:
            keep.update(resolve_blocks(spec, layers, family))
    family.check_request(request, model.denoiser)
    found = slots(request, layers, family, main)
    return Checked(request, checked.runtime, model, found, frozenset(keep | adapter_layers(found, 1)[0]),
                   checked.adapter)


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


def check_adapter_kind(request: Request, adapter: str | None) -> None:
    """What the request asks that its adapter cannot do, from the kind of its adapter file (a local one, or a hub one
    already in the HF cache; read lazily: a CSGO checkpoint is memory-mapped, a safetensors file's names read):
    CSGO's options only with CSGO, and what CSGO cannot do not with it (``csgo.check_request``). ``adapter``: the
    one the request runs with (``None``: a family's default, never CSGO); a hub adapter not downloaded yet is checked
    once it loads (``plan.complete``)."""
    kind = adapter_kind_of(adapter) if adapter is not None else "ip-adapter"
    if kind == "csgo":
        csgo.check_request(request)
    elif kind is not None:
        csgo.check_not_csgo(request)


def adapter_kind_of(adapter: str) -> str | None:
    """``csgo`` for a CSGO checkpoint, ``ip-adapter`` for any other adapter file, ``None`` when not known without the
    hub (a hub adapter not downloaded yet); a local file is resolved, a hub one looked up in the HF cache only."""
    if is_local_adapter_ref(adapter):
        path: Path | None = resolve_adapter_file(adapter)
    else:
        ref = hub_ref("adapter", adapter)
        path = cached_file(ref.repo, ref.file) if ref is not None else None
    if path is None:
        return None
    return "csgo" if adapter_kind(path) == "csgo" else "ip-adapter"


def cached_file(repo: str, file: str) -> Path | None:
    """A hub file's path in the local HF cache, or ``None`` (never asks the hub)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file)
    return Path(found) if isinstance(found, str) else None


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


def model_info(model: str, single_file_config: str | None = None) -> ModelInfo:
    """The family of a model and its denoiser built on the meta device from its config (no weights), cheap enough to
    check requests and blocks specs before loading; a single file without ``single_file_config`` gives its family
    (from its tensor names) and no denoiser."""
    from accelerate import init_empty_weights

    family, cls, config = _denoiser_config(model, single_file_config)
    if cls is None:
        return ModelInfo(family)
    try:
        with init_empty_weights():
            return ModelInfo(family, cls.from_config(config))
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
