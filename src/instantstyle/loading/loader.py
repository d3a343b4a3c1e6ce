"""Loading, once for every surface: the base model, its family, the IP-Adapter and its image encoder, placed
as the ``Runtime`` says.

The base model is a diffusers folder, a hub id or a single original-format ``.safetensors`` file; an
img2img or inpainting model folder becomes its text-to-image sibling (same components), from which every
mode is built later. The adapter is attached with diffusers' ``load_ip_adapter`` and, unless the runtime
keeps all weights, pruned to the layers the blocks spec targets. ``StylePipeline.from_pretrained`` is the
entry point; this module returns the parts it is made of. ``load_scorer`` loads only what scores need (the
image encoder, the text tower of its CLIP space, CSD), without the denoiser where the model allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import diffusers
import torch

from ..core.adapter import AdapterWeights, attach_adapters, check_adapter_fits, read_adapter
from ..core.blocks import resolve_blocks
from ..core.csgo import CsgoAdapter, check_fits
from ..core.embeddings import ImageEncoder, TextTower, has_clip_text_tower, load_image_encoder, load_text_tower
from ..core.preflight import model_denoiser, model_family
from ..core.processors import check_diffusers
from ..errors import UserError
from ..families import Family, all_families, family_of, family_of_checkpoint
from ..scores.csd import load_csd
from ..scores.scorer import Scorer
from . import memory
from .cache import EmbeddingCache
from .hub import (
    checkpoint_keys,
    find_image_encoder,
    holds_denoiser_only,
    hub_error,
    model_source,
    require_hub,
    resolve_adapter_file,
)
from .runtime import Runtime


@dataclass
class Loaded:
    """What ``load`` made: the diffusers text-to-image pipeline with the adapter in its denoiser, and the rest."""

    pipe: Any
    family: Family
    adapter: AdapterWeights  # kind and dims; the weights live, pruned, in the denoiser
    image_encoder: ImageEncoder
    device: torch.device
    dtype: torch.dtype
    low_memory: bool
    disk_cache: EmbeddingCache | None
    csgo: CsgoAdapter | None = None  # a CSGO checkpoint (then ``adapter.kind`` is ``csgo``)


def load(model: str, adapter: str, runtime: Runtime, *, image_encoder: str | None = None,
         blocks: str | None = None) -> Loaded:
    """Load base model, adapter and image encoder; keep adapter weights only for ``blocks`` (``None``: the family's
    default; all of them when ``runtime.keeps_all_weights``), then place everything (device, device map or offload;
    compile)."""
    check_diffusers()  # before minutes of loading: the adapter edits need the diffusers they were verified with
    single_file = Path(model).expanduser().is_file()
    require_hub(("model", model), ("adapter", adapter), ("image encoder", image_encoder),
                ("single-file config", runtime.single_file_config if single_file else None))  # all missing, at once
    cache = EmbeddingCache.open(runtime.cache_dir) if runtime.cache_dir else None
    device = runtime.placement()
    dtype = runtime.torch_dtype(device, model_family(model, runtime.single_file_config).gpu_dtype)
    weights = read_adapter(resolve_adapter_file(adapter))
    if weights.kind == "csgo":  # a misfit is refused from the model's config, before its weights load
        check_fits(weights, *model_denoiser(model, runtime.single_file_config), model)
    encoder_dir = find_image_encoder(weights, image_encoder)
    pipe = load_base_pipeline(model, dtype, runtime.single_file_config, runtime.device_map)
    family = family_of(pipe, f"model {model}")
    denoiser = family.denoiser_of(pipe)
    csgo = None
    if weights.kind == "csgo":
        check_fits(weights, family, denoiser, model)
        csgo = CsgoAdapter.attach(denoiser, weights, content=runtime.keeps_all_weights)
    else:
        check_adapter_fits(weights, family, denoiser)
        keep = None if runtime.keeps_all_weights else [set(resolve_blocks(blocks, family.layers(denoiser), family))]
        attach_adapters(pipe, family, [weights], keep)
    if runtime.memory_budget is not None:
        memory.check_budget(runtime.memory_budget, [denoiser, pipe.vae, *(csgo.resident() if csgo else ())],
                            "the denoiser and the VAE" + (" and CSGO's resamplers" if csgo else ""))
    if runtime.device_map is None:  # a device-mapped pipeline is already placed (and refuses .to())
        # Under a budget the text encoders wait off the device, for families whose prompts are encoded before the call.
        park_text = runtime.memory_budget is not None and family.encode_prompts is not None
        memory.place_pipeline(pipe, device, runtime.offload, budget=park_text)
    if runtime.compile_backend:
        memory.compile_denoiser(denoiser, runtime.compile_backend)
    encoder = load_image_encoder(encoder_dir, dtype, weights=False)  # weights read on first use
    low_memory = runtime.low_memory or runtime.memory_budget is not None
    if runtime.low_memory is None and not low_memory:
        low_memory = runtime.offload is not None or memory.memory_is_tight(device, encoder, dtype)
    if not low_memory:
        memory.ready_encoder(encoder, device, dtype)
    elif device.type == "cpu":
        memory.pin_mmap_threshold()  # freed tensors leave the process (see memory.py)
    weights = replace(weights, state_dict={})  # the file's tensors now live, pruned, in the denoiser
    memory.return_freed_memory()  # give back what loading and pruning freed
    if csgo is not None:
        for projection in csgo.resident():
            projection.to(device)
    return Loaded(pipe, family, weights, encoder, device, dtype, low_memory, cache, csgo)


def load_base_pipeline(
    model: str, dtype: torch.dtype, config: str | None = None, device_map: str | None = None
) -> Any:
    """The base text-to-image pipeline from a folder, a single file or a hub id (on the CPU, or spread over the
    GPUs by diffusers' ``device_map="balanced"``; folders and hub ids only)."""
    source = model_source(model)
    placement = {} if device_map is None else {"device_map": device_map}
    if isinstance(source, Path) and source.is_file():
        if device_map is not None:
            raise UserError(f"model {source}: --device-map needs a diffusers folder or hub id, not a single file")
        pipe = load_single_file(source, dtype, config)
    else:
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(source), dtype=dtype, **placement)
        except OSError as err:
            if isinstance(source, Path):
                raise
            raise hub_error("model", model, err) from None
    pipe = as_text_pipeline(pipe)
    family = family_of(pipe, f"model {model}")
    if type(pipe).__name__ != family.text_pipeline:
        raise UserError(f"model {model}: {type(pipe).__name__} is not supported (a {family.name} text-to-image, "
                        "img2img or inpainting pipeline)")
    return pipe


def load_single_file(source: Path, dtype: torch.dtype, config: str | None) -> Any:
    """A single-file checkpoint through diffusers' ``from_single_file``: a whole model as the family's text-to-image
    pipeline; a file holding only the denoiser (BFL's FLUX files) as the denoiser, with the other parts from the
    ``config`` folder or hub id (the recipe diffusers documents). What diffusers cannot read is one line."""
    keys = checkpoint_keys(source)
    family = family_of_checkpoint(keys, f"model {source}")
    try:
        if not holds_denoiser_only(keys):
            cls = getattr(diffusers, family.text_pipeline)
            return cls.from_single_file(str(source), dtype=dtype, **({"config": config} if config else {}))
        if config is None:
            raise UserError(f"model {source}: this file holds only the {family.name} {family.denoiser}; give "
                            "--single-file-config (the model's diffusers folder or hub id) for the other parts")
        denoiser = getattr(diffusers, family.denoiser_class).from_single_file(
            str(source), config=config, subfolder=family.denoiser, torch_dtype=dtype)
        return getattr(diffusers, family.text_pipeline).from_pretrained(config, dtype=dtype,
                                                                        **{family.denoiser: denoiser})
    except OSError as err:
        raise hub_error("the config for single-file model", str(source), err) from None
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise UserError(f"model {source}: diffusers cannot load this {family.name} single file "
                        f"({type(err).__name__}: {str(err)[:160]}); give a diffusers folder or hub id") from None


def as_text_pipeline(pipe: Any) -> Any:
    """An img2img or inpainting pipeline (e.g. an inpainting model folder) as its text-to-image sibling sharing the
    components (diffusers' ``AutoPipelineForText2Image.from_pipe``): every mode is then built from it alike."""
    if any(type(pipe).__name__ == family.text_pipeline for family in all_families()):
        return pipe
    try:
        return diffusers.AutoPipelineForText2Image.from_pipe(pipe)
    except (ValueError, KeyError):  # no text-to-image sibling: the caller refuses it
        return pipe


def load_scorer(adapter: str, runtime: Runtime, *, model: str | None = None, image_encoder: str | None = None,
                content_text_encoder: str | None = None, csd: str | None = None) -> Scorer:
    """A ``Scorer`` without a pipeline: the adapter's image encoder; the CLIP text tower of its space
    (``content_text_encoder``, else ``model``'s own tower of that width, SDXL's ``text_encoder_2``, else the image
    encoder's own CLIP repository's, as ``StylePipeline.content_text_tower``; none when none: no text scores); CSD
    from the checkpoint ``csd``. Only a single-file model loads whole."""
    device = runtime.placement()
    dtype = runtime.torch_dtype(device)
    csd_model = load_csd(csd, device, dtype) if csd else None  # first: a refused file fails before the rest loads
    weights = read_adapter(resolve_adapter_file(adapter))
    encoder = load_image_encoder(find_image_encoder(weights, image_encoder), dtype)
    del weights  # only its kind and width were needed
    want = encoder.embed_dim
    tower = None
    if content_text_encoder is not None:
        tower = load_text_tower(content_text_encoder, dtype=dtype, width=want)
    elif model is not None:
        tower = model_text_tower(model, want, dtype, runtime.single_file_config)
    if tower is None and has_clip_text_tower(Path(encoder.identity)):  # a whole CLIP repository (XLabs FLUX)
        tower = load_text_tower(encoder.identity, dtype=dtype, width=want)
    encoder.model.to(device)  # type: ignore[arg-type]  # transformers types .to loosely
    if tower is not None:
        tower.model.to(device)
    return Scorer(encoder, tower, csd_model, max_pixels=runtime.max_pixels)


def model_text_tower(model: str, want: int, dtype: torch.dtype, config: str | None = None) -> TextTower | None:
    """The model's own CLIP text tower with a ``want``-wide projection (a family's ``content_towers``: SDXL's
    ``text_encoder_2``), read from its folder or hub snapshot alone; ``None`` when it has none of that width."""
    source = model_source(model)
    towers = list(dict.fromkeys(pair for family in all_families() for pair in family.content_towers))
    if isinstance(source, Path) and source.is_file():  # a single file holds its towers: load it
        pipe = load_base_pipeline(model, dtype, config)
        for tokenizer, encoder in towers:
            found = getattr(pipe, encoder, None)
            if found is not None and getattr(found.config, "projection_dim", None) == want:
                return TextTower(getattr(pipe, tokenizer), found.eval())
        return None
    try:
        index = diffusers.DiffusionPipeline.load_config(str(source))
        for tokenizer, encoder in towers:
            if encoder not in index:
                continue
            folder = source if isinstance(source, Path) else _hub_folders(source, [encoder, tokenizer])
            if _projection_dim(folder / encoder) == want:
                return load_text_tower(folder, encoder, tokenizer, dtype)
    except OSError as err:
        raise hub_error("model", model, err) from None
    return None


def _hub_folders(repo: str, subfolders: list[str]) -> Path:
    """The local snapshot of a hub model holding ``subfolders`` (fetched through the HF cache if needed)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=[f"{sub}/*" for sub in subfolders]))
    except Exception as err:
        raise hub_error("model", repo, err) from None


def _projection_dim(folder: Path) -> int | None:
    """A CLIP text config's ``projection_dim`` (``None``: no readable config, or no projection)."""
    import json

    try:
        value = json.loads((folder / "config.json").read_text()).get("projection_dim")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
