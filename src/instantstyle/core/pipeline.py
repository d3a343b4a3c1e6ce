"""How an image is made: ``StylePipeline`` runs ``Request``s on one loaded diffusers pipeline.

One path to an image. ``prepare`` completes the request (model, adapter, size, seed) and sets everything
in the loaded models that depends on it (the adapters in the denoiser with per-slot layer scales, the
scheduler, the LoRAs, how the VAE decodes), then builds the call: the diffusers pipeline for the request's mode
(sharing the loaded weights) and its keyword arguments: the prompts encoded first by the pipeline's own
``encode_prompt`` (``prompt_embeds``...), ``ip_adapter_image_embeds``, mode inputs, region masks, the style
schedule. The work runs in phases, ``PHASES``: text encoding and style encoding in ``prepare``, denoising and
decoding in the call; ``StylePipeline.on_phase`` is told where each begins (the benchmark's per-phase memory).
``__call__`` runs one prepared request; ``generate_many`` runs requests that may share one denoising call as
one, from the first one's preparation, so a batched image equals ``__call__``'s of the same request whatever
ran before.

Where later features hook in: per-request changes to the models go in ``_set_models``;
further call arguments in ``_call_kwargs``; changes that must hold only while the call runs (HiDiffusion's
hooks on the UNet, ``Request.hidiffusion``) as context managers in ``Prepared.during``; steps that change the
images after denoising in ``finish``. Scores are asked for from a finished ``Result`` (``score``): they never
change an image. A CSGO checkpoint (``csgo``) replaces the IP-Adapter's steps in three places, each one line:
``complete`` (its defaults and size rule), ``_set_models`` (``_set_csgo``: its layers and ControlNet) and
``_call_kwargs`` (``csgo_embeds_kwargs``: its tokens appended to the text embeddings).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import UserError
from ..families import Family
from ..files.images import load_image
from ..loading import loader, memory
from ..loading.cache import EmbeddingCache
from ..loading.extras import Extras
from ..loading.hub import resolve_adapter_file
from ..loading.runtime import DEFAULT_ADAPTER, DEFAULT_MODEL, Runtime
from ..modes import control, hidiffusion, restyle
from ..modes import image as modes
from ..scores.csd import CsdModel
from ..scores.scorer import Scorer, Scores
from . import csgo, guards, processors, routing, styles
from .adapter import AdapterWeights, attach_adapters, read_adapter
from .blocks import expand_preset_ref
from .caption import caption
from .embeddings import ImageEncoder, TextTower, has_clip_text_tower, image_hash
from .lora import apply_loras
from .request import DEFAULT_CONTROL_SCALE, DEFAULT_GUIDANCE, MIN_SIZE, Request, StyleRef
from .schedulers import make_scheduler
from .styles import EmbeddingStore, LoadedAdapter

#: The phases of making an image, in order (``StylePipeline.on_phase``); ``end`` follows the last.
PHASES = ("text", "style", "denoise", "decode")

#: Fields in which requests sharing one denoising call may differ (each image keeps its own noise).
PER_IMAGE_FIELDS = ("prompt", "negative_prompt", "seed", "num_images")


def batch_key(request: Request) -> tuple[Any, ...]:
    """Requests with equal keys can share one denoising call: every field but the per-image ones is equal, and
    all or none have a negative prompt (an empty one is no negative prompt, not the encoding of "")."""
    fields = [f.name for f in dataclasses.fields(Request) if f.name not in PER_IMAGE_FIELDS]
    return (*(getattr(request, name) for name in fields), bool(request.negative_prompt))


def _seed(request: Request) -> int:
    """The seed of a completed request."""
    assert request.seed is not None
    return request.seed


def guidance_of(request: Request) -> float:
    """The guidance of a completed request."""
    assert request.guidance is not None
    return request.guidance


def can_batch(request: Request) -> bool:
    """Text-to-image without a ControlNet or regions: its inputs are the same for every image of a batch."""
    return request.mode == "text" and request.control is None and not request.regions


@dataclass
class Result:
    """The images and the complete request that reproduces them (seed and size filled in)."""

    images: list[Image.Image]
    request: Request


@dataclass
class Prepared:
    """A request ready to denoise: completed, the models set for it, the diffusers pipeline of its mode and the
    keyword arguments of its call."""

    request: Request
    pipe: Any
    kwargs: dict[str, Any]
    #: Context managers entered around the denoising call and left after it (changes that last one call).
    during: list[AbstractContextManager[Any]] = field(default_factory=list)

    def call(self, **changes: Any) -> Any:
        """Run the diffusers call (with ``changes`` to its arguments) inside every ``during`` context."""
        with ExitStack() as stack:
            for context in self.during:
                stack.enter_context(context)
            return self.pipe(**{**self.kwargs, **changes})


@dataclass
class StylePipeline:
    """A diffusers pipeline of a supported family with an InstantStyle adapter, ready to run requests."""

    pipe: Any  # the diffusers text-to-image pipeline; every mode's pipeline shares its components
    family: Family
    adapter: AdapterWeights  # kind and dims; the weights live in the denoiser
    image_encoder: ImageEncoder
    model_id: str
    runtime: Runtime
    device: torch.device
    dtype: torch.dtype
    low_memory: bool = False  # image encoder off the device between uses (see ``memory``)
    disk_cache: EmbeddingCache | None = None  # reference embeddings kept on disk too (``Runtime.cache_dir``)
    adapter_ref: str | None = None  # the adapter as the user named it (a hub reference stays one in the PNG)
    content_text_encoder: str | None = None  # default for requests that name none
    csgo: csgo.CsgoAdapter | None = None  # a CSGO checkpoint is the adapter: its steps replace the IP-Adapter's
    embeddings: EmbeddingStore = field(init=False, repr=False)  # reference embeddings, each computed once
    extras: Extras = field(init=False, repr=False)  # what requests name besides the base model, loaded once
    #: Told the name of each phase (``PHASES``, then ``end``) as it begins; ``None``: nobody listens.
    on_phase: Callable[[str], None] | None = field(default=None, repr=False)
    budget: memory.Budget | None = field(init=False, repr=False)  # with ``runtime.memory_budget``
    #: Restyled photos' inverted latents (``modes.restyle``); ``inversions.seconds``: the last inversion's cost.
    inversions: restyle.InversionCache = field(default_factory=restyle.InversionCache, init=False, repr=False)
    _base_scheduler: Any = field(default=None, repr=False)
    _attached: tuple[str, ...] = field(default=(), repr=False)  # the further adapters now in the denoiser
    _scorers: dict[tuple[str | None, str | None], Scorer] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        limit = self.runtime.memory_budget
        self.budget = None if limit is None else memory.Budget(self.device, int(limit * memory.GiB))
        make_room = None if self.budget is None else self._make_room
        self.embeddings = EmbeddingStore(self.device, self.dtype, self.low_memory, self.disk_cache,
                                         max_pixels=self.runtime.max_pixels, make_room=make_room)
        self.extras = Extras(self.device, self.dtype)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        adapter: str = DEFAULT_ADAPTER,
        runtime: Runtime | None = None,
        *,
        image_encoder: str | None = None,
        content_text_encoder: str | None = None,
        blocks: str | None = None,
        **options: Any,
    ) -> StylePipeline:
        """The one loader: base model, adapter (weights kept only for ``blocks``, ``None`` being the family's
        default, unless the runtime keeps all)
        and image encoder, placed as ``runtime`` says. ``options`` are ``Runtime`` fields overriding it
        (``device="cpu"``, ``offload="model"``, ``low_memory=True``, ``cache_dir=...``); see ``runtime``."""
        runtime = (runtime or Runtime()).replace(**options)
        parts = loader.load(model, adapter, runtime, image_encoder=image_encoder, blocks=blocks)
        return cls(
            parts.pipe, parts.family, parts.adapter, parts.image_encoder, model, runtime, parts.device, parts.dtype,
            parts.low_memory, parts.disk_cache, adapter_ref=adapter, content_text_encoder=content_text_encoder,
            csgo=parts.csgo,
        )

    @property
    def arch(self) -> str:
        """The model family's name (``sdxl``, ``sd15``)."""
        return self.family.name

    @property
    def denoiser(self) -> Any:
        """The denoising model (the UNet; a transformer in DiT families) that holds the adapter."""
        return self.family.denoiser_of(self.pipe)

    @property
    def layers(self) -> list[str]:
        """The denoiser's injectable attention layers, the units blocks resolve to."""
        return self.family.layers(self.denoiser)

    @property
    def keep_all_weights(self) -> bool:
        return self.runtime.keeps_all_weights

    @property
    def text_encoders(self) -> list[Any]:
        """The pipeline's text encoders (on the device only while they encode under a memory budget)."""
        return [getattr(self.pipe, name) for name in memory.text_encoder_names(self.pipe)]

    # --- one path to an image ----------------------------------------------------------------------
    def __call__(self, request: Request | None = None, *, progress: bool = False, **fields: Any) -> Result:
        """Make the images of a request (or of ``Request(**fields)``, or of ``request`` with ``fields`` changed)."""
        if request is None:
            request = Request(**fields)
        elif fields:
            request = request.replace(**fields)
        return self.run(self.prepare(request), progress)

    def prepare(self, request: Request, shared: Sequence[Request] = ()) -> Prepared:
        """Complete the request, set the models for it and build its denoising call. ``shared``: the other
        (completed) requests of a call that batches several (``generate_many``), whose seeds the per-image
        randomness of the call draws from."""
        request = self.complete(request)
        if request.hidiffusion:  # a family without it is refused before the models change
            hidiffusion.settings_of(self.family)
        self.family.check_request(request, self.denoiser)
        slots = self._set_models(request)
        kwargs = self._call_kwargs(request, slots)
        guided = self._restyle(request, kwargs) if request.restyle is not None else None
        pipe = modes.mode_pipeline(self.pipe, self.family, request, self.controlnet(request))
        kwargs = modes.fit_call(pipe, kwargs, request)
        guards.warn_if_prompts_truncated(pipe, request)
        never_nan = guards.refuse_nonfinite(self.pipe.vae, guards.nonfinite_cause(self.dtype, request))
        # The denoiser is back on the device (a memory budget) before HiDiffusion's hooks go on it.
        during: list[AbstractContextManager[Any]] = [never_nan, self._denoising(), *([guided] if guided else [])]
        if request.hidiffusion:
            seeds = [_seed(r) for r in (request, *shared) for _ in range(r.num_images)] if shared else None
            during.append(hidiffusion.for_request(self.family, self.denoiser, pipe.scheduler, request, seeds))
        return Prepared(request, pipe, kwargs, during)

    def run(self, prepared: Prepared, progress: bool = False) -> Result:
        """Denoise a prepared request."""
        prepared.pipe.set_progress_bar_config(disable=not progress)
        return self.finish(prepared.request, list(prepared.call().images))

    def finish(self, request: Request, images: list[Image.Image]) -> Result:
        """After denoising: inpainting puts the init image back outside the mask."""
        return Result(modes.paste_back(images, request, self.runtime.max_pixels), request)

    def generate_many(self, requests: Sequence[Request]) -> list[Result]:
        """The results of several requests: in one denoising call when they can share it (equal ``batch_key``, all
        ``can_batch``), else one by one. In a shared call each request's noise is drawn from its own seed exactly
        as ``__call__`` draws it, so an image does not depend on the others in its call beyond float rounding."""
        if (len(requests) < 2 or self.family.draw_latents is None or not all(can_batch(r) for r in requests)
                or len({batch_key(r) for r in requests}) > 1):
            return [self(r) for r in requests]
        done = [self.complete(r) for r in requests]  # fills in every seed first
        prepared = self.prepare(done[0], done[1:])
        for r in done[1:]:
            guards.warn_if_prompts_truncated(prepared.pipe, r)
        # Negatives go to the shared call as the first request's own call took them: as text (a family encoding in
        # its call; FLUX only with true CFG, which an empty negative turns on), else encoded when it has one.
        call = prepared.kwargs
        negative = call["negative_prompt"] is not None if "negative_prompt" in call else bool(done[0].negative_prompt)
        self._phase("text")
        batch = {
            **self.text_kwargs([r.prompt for r in done for _ in range(r.num_images)],
                               [r.negative_prompt or "" for r in done for _ in range(r.num_images)] if negative
                               else None, guidance_of(done[0])),
            "num_images_per_prompt": 1,
            "latents": torch.cat([self.family.draw_latents(self.pipe, r, self.device, self.dtype) for r in done]),
        }
        prepared.pipe.set_progress_bar_config(disable=True)
        images = list(prepared.call(**batch).images)
        results, start = [], 0
        for r in done:
            results.append(self.finish(r, images[start : start + r.num_images]))
            start += r.num_images
        return results

    def complete(self, request: Request) -> Request:
        """Fill in what the pipeline decides: model and adapter identity, size, seed, strength and ControlNet; no
        blocks spec becomes the family's default and ``@FILE:NAME`` the spec it names (so the image records the
        blocks it was made with)."""
        adapter = self.adapter_ref or self.adapter.path
        for name, mine in (("model", self.model_id), ("adapter", adapter)):
            theirs = getattr(request, name)
            if theirs is None or theirs == mine or Path(theirs).expanduser() == Path(mine).expanduser():
                continue
            # Another spelling of the same adapter (a path into the HF cache, say) is resolved once, here only.
            if name == "model" or resolve_adapter_file(theirs) != Path(self.adapter.path):
                raise UserError(f"request is for {name} {theirs!r} but this pipeline has {mine!r}")
        if request.restyle is not None:  # InstantStyle-Plus: its recipe for what the request leaves unset
            restyle.check_family(self.family)
            request.check_restyle_prompt()
            request = request.replace(**restyle.recipe_fields(request))
            if not request.prompt.strip() and request.caption_model is not None:
                photo = load_image(request.restyle or "", "photo to restyle", self.runtime.max_pixels)
                request = request.replace(prompt=caption(photo, request.caption_model, self.device, self.dtype))
        default = self.family.native_size(self.pipe)
        if self.csgo is not None:  # CSGO: its own defaults and size rule, and what it cannot do (core/csgo.py)
            csgo.check_request(request)
            # --caption with CSGO (the prompt from the content image, as restyle's above) is wired in here.
            request = csgo.complete(request, default, self.runtime.max_pixels)
        else:
            csgo.check_not_csgo(request)
        width, height = modes.init_size(request, default, self.family.size_multiple,
                                        self.runtime.max_pixels) or (default, default)
        for given, fallback in ((request.width, width), (request.height, height)):
            if given is None and fallback < MIN_SIZE:  # the user never gave it: say where it came from
                raise UserError(f"the model's default size {fallback} is below {MIN_SIZE}; pass --width/--height")
        default_blocks = self.family.default_blocks

        def blocks(spec: str | None) -> str:  # no spec: the family's default; @FILE:NAME: the spec it names
            return default_blocks if spec is None else expand_preset_ref(spec)

        return request.replace(
            model=request.model or self.model_id,
            adapter=request.adapter or adapter,
            blocks=blocks(request.blocks) if self.csgo is None else None,  # CSGO's blocks are trained in
            guidance=DEFAULT_GUIDANCE if request.guidance is None else request.guidance,
            control_scale=DEFAULT_CONTROL_SCALE if request.control_scale is None else request.control_scale,
            adapters=tuple(dataclasses.replace(use, blocks=blocks(use.blocks)) for use in request.adapters),
            width=request.width or width,
            height=request.height or height,
            seed=request.seed if request.seed is not None else secrets.randbits(32),
            strength=modes.default_strength(request),
            controlnet=request.control and control.controlnet_ref(request.control, self.family, request.controlnet),
            negative_prompt=request.negative_prompt if request.negative_prompt is not None else "",
        )

    def _set_models(self, request: Request) -> list[dict[str, float]]:
        """Set everything in the loaded models that depends on the request; returns the per-slot layer scales."""
        slots = self._set_adapters(request) if self.csgo is None else self._set_csgo(request)
        if self._base_scheduler is None:
            self._base_scheduler = self.pipe.scheduler
        base = self._base_scheduler
        self.pipe.scheduler = make_scheduler(request.scheduler, base) if request.scheduler else base
        apply_loras(self.pipe, [(lora.path, lora.scale) for lora in request.lora])
        memory.set_decode(self.pipe.vae, self.decode(request))
        return slots

    def decode(self, request: Request) -> memory.Decode:
        """How the VAE decodes the request: under a memory budget, whole images where they fit beside the
        denoiser, else tiles that fit (``memory.decode_plan``); with ``vae_tiling``, tiles of half the native size;
        else in the VAE's own tiles above ``memory.VAE_TILING_ABOVE`` px only."""
        assert request.width is not None and request.height is not None
        vae = self.pipe.vae
        if self.budget is not None:  # with CSD guidance, CSD stays beside them through the call
            guided = request.csd is not None and bool(request.style_guidance or request.content_guidance)
            resident = (memory.module_bytes(self.denoiser) + memory.module_bytes(self.controlnet(request))
                        + memory.module_bytes(vae, memory.vae_decode_dtype(vae, self.dtype))
                        + (memory.module_bytes(self.extras.csd(request.csd or "").backbone) if guided else 0))
            room = self.budget.limit - resident - memory.DECODE_RESERVE
            return memory.decode_plan(vae, request.width, request.height, self.dtype, room)
        if self.runtime.vae_tiling:
            return memory.Decode(self.family.native_size(self.pipe) // 2, slicing=True)
        large = max(request.width, request.height) > memory.VAE_TILING_ABOVE
        return memory.Decode(memory.own_tile(vae) if large else None)

    def _set_adapters(self, request: Request) -> list[dict[str, float]]:
        """Resolve the blocks to per-slot layer scales (see ``routing.slot_scales``) and set them; reload the
        adapters when the request names other further adapters or needs layers that were pruned."""
        slots = routing.slot_scales(request, self.layers, self.family)
        denoiser = self.denoiser
        wanted = tuple(a.path for a in request.adapters)
        real = 1 + len(wanted)
        own = [[slots[0], *slots[real:]], *([scales] for scales in slots[1:real])]  # per loaded adapter
        targets = [{layer for scales in group for layer, s in scales.items() if s} for group in own]
        held = processors.active_layers(denoiser, self.family)
        pruned = held is not None and any(not t <= h for t, h in zip(targets, held, strict=False))
        if held is None or wanted != self._attached or pruned:
            files = [read_adapter(self.adapter.path), *(read_adapter(self._further(p).weights.path) for p in wanted)]
            keep = None if self.keep_all_weights else [set().union(*group) for group in own]
            attach_adapters(self.pipe, self.family, files, keep)
            self._attached = wanted
        processors.set_slot_count(denoiser, self.family, len(slots))
        processors.set_scales(denoiser, self.family, slots, routing.per_image_weights(request))
        return slots

    def _set_csgo(self, request: Request) -> list[dict[str, float]]:
        """CSGO instead of IP-Adapters (``csgo``): its content layers read in if the request injects content, its
        ControlNet made CSGO's, the content and style scales set; under a memory budget everything that stays on the
        device must fit. No IP-Adapter slots."""
        assert self.csgo is not None
        if request.content_adapter_scale:
            self.csgo.need_content(self.denoiser)
        controlnet = self.controlnet(request)
        assert controlnet is not None  # a CSGO request is completed with its tile ControlNet
        self.csgo.controlnet(controlnet, self.denoiser)
        self.csgo.set_scales(request, [self.denoiser, controlnet])
        if self.budget is not None:
            memory.check_budget(self.runtime.memory_budget or 0.0,
                                [self.denoiser, controlnet, self.pipe.vae, *self.csgo.resident()],
                                "the denoiser, the ControlNet, the VAE and CSGO's resamplers")
        return []

    def _call_kwargs(self, request: Request, slots: list[dict[str, float]]) -> dict[str, Any]:
        """The diffusers call for a request: prompt, steps, guidance, seed, style embeds, mode inputs, masks,
        schedule."""
        assert request.seed is not None and request.width is not None and request.height is not None
        self._phase("text")
        text = self.text_kwargs([request.prompt], [request.negative_prompt] if request.negative_prompt else None,
                                guidance_of(request))
        self._phase("style")
        kwargs: dict[str, Any] = {
            **text,
            "num_inference_steps": request.steps,
            **self.family.guidance_kwargs(request),
            "num_images_per_prompt": request.num_images,
            "generator": torch.Generator("cpu").manual_seed(request.seed),
            **(self.image_embeds_kwargs(request) if self.csgo is None else self.csgo_embeds_kwargs(request, text)),
            **modes.mode_kwargs(request, self.depth_model(request), self.runtime.max_pixels),
        }
        if self.budget is not None:  # a content prompt's tower came for the style
            named = [tower.model for tower in self.extras.text_towers.values()]
            self.budget.park([*(self.text_encoders if self.family.encode_prompts is not None else ()), *named])
        masks = routing.region_masks(request, (request.width, request.height), self.runtime.max_pixels)
        if masks is not None:
            kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": masks}
        callback = routing.schedule_callback(request, self.denoiser, self.family, slots,
                                             routing.per_image_weights(request))
        if callback is not None:
            kwargs["callback_on_step_end"] = callback
        return kwargs

    def text_kwargs(self, prompts: list[str], negatives: list[str] | None, guidance: float) -> dict[str, Any]:
        """The call's text arguments: the prompts encoded now by the pipeline's own ``encode_prompt``, as the call
        would encode them (``Family.encode_prompts``; under a memory budget the text encoders are on the device only
        meanwhile), or the prompts themselves for a family that encodes inside its call."""
        if self.family.encode_prompts is None:
            return {"prompt": prompts, "negative_prompt": negatives}
        cfg = self.family.guides(self.pipe, guidance)
        with torch.no_grad(), (self.budget.using(self.text_encoders, [self.denoiser]) if self.budget
                               else memory.nothing()):
            return self.family.encode_prompts(self.pipe, prompts, negatives, self.pipe._execution_device, cfg)

    # --- restyling a photo (InstantStyle-Plus) -------------------------------------------------------------
    def _restyle(self, request: Request, kwargs: dict[str, Any]) -> AbstractContextManager[Any] | None:
        """The restyle hook (``modes.restyle``): before the call, the photo's ReNoise inversion (a plain pass: the
        adapters' scales 0 meanwhile), cached per photo, prompt, size, steps and seed; the call starts from its
        inverted latent. With CSD guidance, the context that guides the call's steps (``None`` without)."""
        assert request.restyle is not None
        self._phase("invert")
        photo = restyle.load_photo(request, self.runtime.max_pixels)

        def invert() -> torch.Tensor:
            text = self.text_kwargs([request.prompt], None, 0.0)
            if self.budget is not None:  # the text encoders are parked again; the denoiser and the VAE invert
                self.budget.bring([self.denoiser, self.pipe.vae])
            with torch.no_grad(), processors.scales_off(self.denoiser, self.family):
                return restyle.invert(self.pipe, make_scheduler("ddim", self._base_scheduler), text,
                                      kwargs.get("ip_adapter_image_embeds", ()), photo, request, self.dtype)

        key = restyle.inversion_key(request, image_hash(request.restyle), self.model_id, self.dtype)
        kwargs.update(restyle.call_kwargs(self.inversions.get(key, invert), self.device, self.dtype))
        if not (request.style_guidance or request.content_guidance):
            return None
        assert request.csd is not None
        csd = self.extras.csd(request.csd)
        guidance = restyle.csd_guidance_for(csd, request, self.runtime.max_pixels)
        if self.budget is not None and self.budget.moves:  # CSD comes to the device for the call, as a scorer does
            self.budget.make_room(memory.module_bytes(csd.backbone), [])
            csd.to(self.device)
        return restyle.csd_guidance(self.pipe, guidance, checkpointing=self.budget is not None)

    # --- phases and placement -----------------------------------------------------------------------
    def _phase(self, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(name)

    def _make_room(self, need: int) -> None:
        """Room on the device for ``need`` more bytes (an encoder): the denoiser steps aside if it must."""
        assert self.budget is not None
        self.budget.make_room(need, [self.denoiser])

    @contextmanager
    def _denoising(self) -> Iterator[None]:
        """Around the call: the denoiser back on the device under a budget; the phases told (decoding begins when
        the VAE's decoder first runs)."""
        if self.budget is not None:
            self.budget.bring([self.denoiser, self.pipe.vae])
        if self.on_phase is None:
            yield
            return
        self.on_phase("denoise")
        told: list[bool] = []

        def decoding(*_: Any) -> None:
            if not told and not torch.is_grad_enabled():  # CSD guidance decodes each step with gradients
                told.append(True)
                self._phase("decode")

        handle = self.pipe.vae.decoder.register_forward_pre_hook(decoding)
        try:
            yield
        finally:
            handle.remove()
            self._phase("end")

    # --- what the request names besides the base model --------------------------------------------
    def controlnet(self, request: Request) -> Any | None:
        """The request's ControlNet (loaded once per reference, on the pipeline's device), or ``None``."""
        if request.control is None:
            return None
        ref = control.controlnet_ref(request.control, self.family, request.controlnet)
        return self.extras.controlnet(ref, self.family, self.denoiser)

    def depth_model(self, request: Request) -> Any | None:
        """The request's depth-estimation model (loaded once), or ``None``."""
        return self.extras.depth_model(request.depth_model) if request.depth_model is not None else None

    def _further(self, ref: str) -> LoadedAdapter:
        return self.extras.adapter(ref, self.family, self.denoiser, [self.image_encoder])

    def content_text_tower(self, folder: str | None = None) -> TextTower:
        """The CLIP text tower (and tokenizer) in the image encoder's space, for content prompts and scores: the one
        named (``folder``, else the pipeline's default), else one of the model's own (SDXL's ``text_encoder_2`` for
        its ViT-bigG adapter), else the image encoder's own CLIP repository's (openai/clip-vit-large-patch14 holds
        both towers: XLabs' FLUX adapters); under a memory budget it waits off the device, see ``_tower_on_device``."""
        # The image encoder's CLIP space (CSGO reads hidden states, but its encoder's projection is that space).
        want = self.image_encoder.embed_dim if self.adapter.kind == "csgo" else self.adapter.image_embed_dim
        folder = folder or self.content_text_encoder
        if folder is not None:
            return self.extras.text_tower(folder, want)
        for tokenizer, encoder in self.family.content_towers:
            tower = getattr(self.pipe, encoder, None)
            if tower is not None and getattr(tower.config, "projection_dim", None) == want:
                return TextTower(getattr(self.pipe, tokenizer), tower)
        own = Path(self.image_encoder.identity)
        if has_clip_text_tower(own):
            return self.extras.text_tower(str(own), want)
        raise UserError(f"content prompt needs a CLIP text encoder with {want}-d projection (the image encoder's "
                        "space); pass --content-text-encoder")

    # --- scores ------------------------------------------------------------------------------------------
    def scorer(self, content_text_encoder: str | None = None, csd: str | Path | CsdModel | None = None) -> Scorer:
        """A ``Scorer`` on this pipeline's loaded encoders: its image encoder, the CLIP text tower of that space
        (``content_text_tower``; none when the model has none and none is named: then no text scores), and CSD
        (a checkpoint file, loaded once, or a loaded ``CsdModel``; none: no CSD score). Made once per choice."""
        key = (content_text_encoder or self.content_text_encoder,
               csd.identity if isinstance(csd, CsdModel) else None if csd is None else str(csd))
        if key not in self._scorers:
            try:
                tower: TextTower | None = self.content_text_tower(key[0])
            except UserError:
                if key[0] is not None:  # a tower the user named that does not load or fit: say so
                    raise
                tower = None
            model = csd if isinstance(csd, CsdModel) else None if csd is None else self.extras.csd(str(csd))
            make_room = None
            if self.budget is not None:  # the scoring models wait off the device, and come only to score
                resident = self.text_encoders if self.family.encode_prompts is None else []  # run by the call
                self.budget.park([tower.model if tower is not None and tower.model not in resident else None])
                if model is not None and self.budget.moves:
                    model.to("cpu")
                make_room = self._make_room
            self._scorers[key] = Scorer(self.image_encoder, tower, model, self.device, self.dtype, self.low_memory,
                                        max_pixels=self.runtime.max_pixels, make_room=make_room)
        return self._scorers[key]

    def score(
        self,
        images: Result | Sequence[Image.Image | str | Path],
        prompt: str | None = None,
        style: Sequence[StyleRef | str] | StyleRef | str = (),
        content_prompt: str | None = None,
        *,
        csd: str | Path | CsdModel | None = None,
    ) -> list[Scores]:
        """The scores of images (see ``scores``): CLIP text against ``prompt``, CLIP style (and CSD with ``csd``)
        against the ``style`` references, content leak against ``content_prompt``. Given a ``Result``, its
        request supplies whatever is not given (prompt, style, content prompt, fit, text tower)."""
        if isinstance(images, Result):
            request = images.request
            scorer = self.scorer(request.content_text_encoder, csd)
            return scorer.score(images.images, prompt if prompt is not None else request.prompt,
                                style or request.style, content_prompt or request.content_prompt, request.style_fit)
        return self.scorer(csd=csd).score(images, prompt, style, content_prompt)

    # --- the style embedding ----------------------------------------------------------------------
    @property
    def main_adapter(self) -> LoadedAdapter:
        return LoadedAdapter(self.adapter, self.image_encoder, self.family.negative_image)

    def encode(self, path: str, fit: str = "crop") -> torch.Tensor:
        """One reference image's embedding for the main adapter (cached by content; see ``EmbeddingStore``)."""
        return self.embeddings.encode(path, self.main_adapter, fit)

    def style_embeds(self, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        """(style, negative) of the main adapter: references blended, content subtracted (InstantStyle)."""
        tower = lambda: self._tower_on_device(request.content_text_encoder)  # noqa: E731  (loaded only when needed)
        return styles.style_embeds(self.embeddings, request, self.main_adapter, tower)

    def _tower_on_device(self, folder: str | None) -> TextTower:
        """The content text tower, brought to the device under a memory budget (parked again after the style)."""
        tower = self.content_text_tower(folder)
        if self.budget is not None:
            self._make_room(memory.module_bytes(tower.model) if not memory.on_device(tower.model, self.device) else 0)
            self.budget.bring([tower.model])
        return tower

    def image_embeds_kwargs(self, request: Request) -> dict[str, Any]:
        """The diffusers call's image embeddings (``ip_adapter_image_embeds``, as the family takes them): per slot
        (main style, further adapters, then composition) the style and its CFG negative, n = 1 or one per region."""
        further = [self._further(use.path) for use in request.adapters]
        pairs = styles.slot_embeds(self.embeddings, request, self.main_adapter, further,
                                   lambda: self._tower_on_device(request.content_text_encoder))
        cfg = self.family.guides(self.pipe, guidance_of(request))
        return self.family.embeds_kwargs(pairs, cfg, self.device, self.dtype)

    def csgo_embeds_kwargs(self, request: Request, text: dict[str, Any]) -> dict[str, Any]:
        """CSGO's call: the text embeddings with its content and style tokens appended (``csgo.with_tokens``); the
        style references' and the content image's encoder features each computed once (``EmbeddingStore``)."""
        assert self.csgo is not None and request.width is not None and request.height is not None
        if "prompt_embeds" not in text:
            raise RuntimeError("CSGO needs the prompts encoded before the call (an SDXL pipeline)")
        main = self.main_adapter
        style = self.embeddings.references(request.style, main, request.style_fit, regions=False)
        content = None
        if self.csgo.content_projection is not None:  # else no layer holds weights to read the content tokens
            content = self.embeddings.encode(request.content_image, main, size=(request.width, request.height))
        device, dtype = self.device, self.dtype
        return csgo.with_tokens(text, self.csgo.tokens(content, "content", device, dtype),
                                self.csgo.tokens(style, "style", device, dtype))

    def save_style(self, request: Request, path: str | Path, extra: dict[str, str] | None = None) -> Path:
        """Save the request's blended references as a style file, reusable without the images (``extra``: more
        metadata, e.g. the web UI's settings)."""
        return styles.save_style_file(self.embeddings, request, self.main_adapter, path, extra)
