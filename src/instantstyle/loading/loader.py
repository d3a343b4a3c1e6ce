"""Loading, once for every surface: the base model, its family, the IP-Adapter and its image encoder, placed
as the ``Runtime`` says, into one ``Resources``.

The base model is a diffusers folder, a hub id or a single original-format ``.safetensors`` file; an
img2img or inpainting model folder becomes its text-to-image sibling (same components), from which every
mode is built later. The adapter is attached with diffusers' ``load_ip_adapter`` and, unless the runtime
keeps all weights, pruned to the layers the blocks spec targets. ``StylePipeline.from_pretrained`` is the
entry point. Given a ``preflight.Checked`` (a surface checked the request against the model's config before
loading), the hub is not asked again, nor the family looked for, nor the blocks resolved.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import diffusers
import torch

from ..core.adapter import attach_adapters, check_adapter_fits, read_adapter
from ..core.blocks import resolve_blocks
from ..core.csgo import CsgoAdapter, check_fits
from ..core.embeddings import load_image_encoder
from ..core.preflight import Checked, model_info
from ..core.styles import EmbeddingMemory, EmbeddingStore
from ..errors import UserError
from ..families import Family, all_families, family_of, family_of_checkpoint
from . import memory
from .cache import EmbeddingCache
from .extras import Extras
from .hub import (
    checkpoint_keys,
    find_image_encoder,
    holds_denoiser_only,
    hub_error,
    model_source,
    require_hub,
    resolve_adapter_file,
)
from .resources import Resources
from .runtime import Runtime


def load(model: str, adapter: str, runtime: Runtime, *, image_encoder: str | None = None, blocks: str | None = None,
         content_text_encoder: str | None = None, embedding_memory: EmbeddingMemory | None = None,
         checked: Checked | None = None) -> Resources:
    """Load base model, adapter and image encoder; keep adapter weights only for ``blocks`` (``None``: the family's
    default; all of them when ``runtime.keeps_all_weights``; with ``checked``, the layers its checks named), then
    place everything (device, device map or offload; compile). ``embedding_memory``: reference embeddings shared
    with other pipelines."""
    info = checked.model if checked is not None else None
    if info is None:
        single_file = Path(model).expanduser().is_file()
        require_hub(("model", model), ("adapter", adapter), ("image encoder", image_encoder),
                    ("single-file config", runtime.single_file_config if single_file else None))  # all at once
        info = model_info(model, runtime.single_file_config)
    cache = EmbeddingCache.open(runtime.cache_dir) if runtime.cache_dir else None
    device = runtime.placement()
    dtype = runtime.torch_dtype(device, info.family.gpu_dtype)
    weights = read_adapter(resolve_adapter_file(adapter))
    if weights.kind == "csgo":  # a misfit is refused from the model's config, before its weights load
        check_fits(weights, info.family, info.denoiser, model)
    encoder_dir = find_image_encoder(weights, image_encoder)
    pipe = load_base_pipeline(model, dtype, runtime.single_file_config, runtime.device_map, info.family)
    family = info.family
    denoiser = family.denoiser_of(pipe)
    rest: frozenset[str] | None = None
    csgo = None
    if weights.kind == "csgo":
        check_fits(weights, family, denoiser, model)
        csgo = CsgoAdapter.attach(denoiser, weights, content=runtime.keeps_all_weights)
    else:
        check_adapter_fits(weights, family, denoiser)
        if not runtime.keeps_all_weights:
            known = checked.keep if checked is not None else None
            rest = known if known is not None else frozenset(resolve_blocks(blocks, family.layers(denoiser), family))
        attach_adapters(pipe, family, [weights], None if rest is None else [set(rest)])
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
    weights = dataclasses.replace(weights, state_dict={})  # the file's tensors now live, pruned, in the denoiser
    memory.return_freed_memory()  # give back what loading and pruning freed
    if csgo is not None:
        for projection in csgo.resident():
            projection.to(device)
    budget = None
    if runtime.memory_budget is not None:
        budget = memory.Budget(device, int(runtime.memory_budget * memory.GiB), residents=[denoiser])
    store = EmbeddingStore(device, dtype, low_memory, cache, max_pixels=runtime.max_pixels,
                           make_room=budget.make_room if budget is not None else None,
                           memory=embedding_memory if embedding_memory is not None else EmbeddingMemory())
    return Resources(pipe, family, weights, encoder, model, runtime, device, dtype, low_memory, store,
                     Extras(device, dtype), budget, adapter_ref=adapter, content_text_encoder=content_text_encoder,
                     rest=rest, scheduler=pipe.scheduler, csgo=csgo)


def load_base_pipeline(
    model: str, dtype: torch.dtype, config: str | None = None, device_map: str | None = None,
    family: Family | None = None,
) -> Any:
    """The base text-to-image pipeline from a folder, a single file or a hub id (on the CPU, or spread over the
    GPUs by diffusers' ``device_map="balanced"``; folders and hub ids only), of ``family`` when it is known from
    the model's config (else found from the loaded denoiser)."""
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
    family = family or family_of(pipe, f"model {model}")
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
    except UserError:  # ours, already one line (a UserError is a ValueError: never wrapped below)
        raise
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
