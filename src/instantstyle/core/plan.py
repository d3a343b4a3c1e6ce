"""What a request does to the loaded pipeline, decided before it runs (``plan``) and undone after it (``Plan.applied``).

A request becomes images in three steps:

1. ``complete(request, resources)``: what the pipeline decides for a request that does not say is filled in (model
   and adapter identity, size, seed, blocks, strength, ControlNet), so the result records everything that made it.
2. ``plan(request, resources, slots)``: reads the ``Resources`` (``loading.resources``) and never changes the loaded
   pipeline's configuration. It says what the call needs: the adapters in the denoiser and the request's slots
   (``processors.Slot``: which adapter, its scale per layer), the sampler, the LoRAs, how the VAE decodes, the
   ControlNet, the call's arguments that need no configured model (steps, guidance, mode inputs, region masks,
   a batch's noise), the steps that compute further arguments on the configured pipeline just before the call
   (the prompts' and the style's embeddings, the style schedule), the contexts the call runs in, and the steps
   after it.
3. ``Plan.applied(resources)``: a context manager that sets what the plan says (adapters and slots, scheduler,
   LoRAs, VAE decoding), builds the mode's diffusers pipeline (sharing the loaded weights), runs the steps before
   the call, enters the call's contexts and yields the ``Call``; on leaving it, everything it set is as before,
   in reverse order. A long-lived server or batch worker so sees every request as the first.

The work runs in phases, ``PHASES``: text and style encoding before the call, denoising and decoding in it;
``Resources.on_phase`` is told where each begins (the benchmark's per-phase memory).

Where later features hook in (each a field of ``Plan`` that ``plan`` fills, nothing else to edit):

- **call arguments**: plain values go in ``Plan.kwargs`` (``_call_arguments``); an argument computed on the
  configured pipeline just before the call is a ``Plan.before`` step.
- **a step before the call** (InstantStyle-Plus' inversion of the photo into ``latents``, ``_restyle``): a
  ``before`` step, ``(plan, resources, pipe, arguments so far) -> more arguments``.
- **the pipeline the call runs on** (img2img, inpainting, ControlNet: ``modes.image.mode_pipeline``; a separate one
  such as I2VGen-XL for video): ``Plan.pipeline``, ``(plan, resources) -> diffusers pipeline``, called once the
  models are set (restyle's ControlNet img2img call with two adapter slots: its pipeline and its ``slots``).
- **contexts during the call** (HiDiffusion's hooks on the UNet; InstantStyle-Plus' CSD guidance; CSGO's own
  attention processors, in the denoiser and in a ControlNet): a ``Plan.during`` entry, ``(plan, resources, pipe) ->
  context manager``, entered around the call and left after it; it must leave what it changes as it found it.
- **a step after the call** (inpainting's paste-back): a ``Plan.after`` entry, ``(request, images, resources) ->
  images``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import UserError
from ..files.images import load_image
from ..loading import memory
from ..loading.hub import resolve_adapter_file
from ..modes import control, hidiffusion, restyle
from ..modes import image as modes
from . import csgo, guards, routing, styles
from .adapter import adapters_applied
from .blocks import Slot, expand_preset_ref
from .caption import caption
from .embeddings import image_hash
from .lora import loras_applied
from .processors import active_layers, scales_off
from .request import DEFAULT_CONTROL_SCALE, DEFAULT_GUIDANCE, MIN_SIZE, Request
from .schedulers import make_scheduler, scheduler_applied

if TYPE_CHECKING:
    from ..loading.resources import Resources

#: The phases of making an image, in order (``Resources.on_phase``); ``end`` follows the last.
PHASES = ("text", "style", "denoise", "decode")

#: Fields in which requests sharing one denoising call may differ (each image keeps its own noise).
PER_IMAGE_FIELDS = ("prompt", "negative_prompt", "seed", "num_images")

Step = Callable[["Plan", "Resources", Any, dict[str, Any]], dict[str, Any]]
During = Callable[["Plan", "Resources", Any], AbstractContextManager[Any]]
After = Callable[[Request, list[Image.Image], "Resources"], list[Image.Image]]


def batch_key(request: Request) -> tuple[Any, ...]:
    """Requests with equal keys can share one denoising call: every field but the per-image ones is equal, and
    all or none have a negative prompt (an empty one is no negative prompt, not the encoding of "")."""
    fields = [f.name for f in dataclasses.fields(Request) if f.name not in PER_IMAGE_FIELDS]
    return (*(getattr(request, name) for name in fields), bool(request.negative_prompt))


def can_batch(request: Request) -> bool:
    """Text-to-image without a ControlNet or regions: its inputs are the same for every image of a batch."""
    return request.mode == "text" and request.control is None and not request.regions


def complete(request: Request, resources: Resources) -> Request:
    """Fill in what the pipeline decides: model and adapter identity, size, seed, strength and ControlNet; no
    blocks spec becomes the family's default and ``@FILE:NAME`` the spec it names (so the image records the
    blocks it was made with)."""
    family = resources.family
    adapter = resources.adapter_ref or resources.adapter.path
    for name, mine in (("model", resources.model_id), ("adapter", adapter)):
        theirs = getattr(request, name)
        if theirs is None or theirs == mine or Path(theirs).expanduser() == Path(mine).expanduser():
            continue
        # Another spelling of the same adapter (a path into the HF cache, say) is resolved once, here only.
        if name == "model" or resolve_adapter_file(theirs) != Path(resources.adapter.path):
            raise UserError(f"request is for {name} {theirs!r} but this pipeline has {mine!r}")
    if request.restyle is not None:  # InstantStyle-Plus: its recipe for what the request leaves unset
        restyle.check_family(family)
        request.check_restyle_prompt()
        request = request.replace(**restyle.recipe_fields(request))
        request = _captioned(request, request.restyle, "photo to restyle", resources)
    default = family.native_size(resources.pipe)
    if resources.csgo is not None:  # CSGO: its own defaults and size rule, and what it cannot do (core/csgo.py)
        csgo.check_request(request)
        request = _captioned(request, request.content_image, "content image", resources)
        request = csgo.complete(request, default, resources.runtime.max_pixels)
    else:
        csgo.check_not_csgo(request)
    width, height = modes.init_size(request, default, family.size_multiple,
                                    resources.runtime.max_pixels) or (default, default)
    for given, fallback in ((request.width, width), (request.height, height)):
        if given is None and fallback < MIN_SIZE:  # the user never gave it: say where it came from
            raise UserError(f"the model's default size {fallback} is below {MIN_SIZE}; pass --width/--height")

    def blocks(spec: str | None) -> str:  # no spec: the family's default; @FILE:NAME: the spec it names
        return family.default_blocks if spec is None else expand_preset_ref(spec)

    return request.replace(
        model=request.model or resources.model_id,
        adapter=request.adapter or adapter,
        blocks=blocks(request.blocks) if resources.csgo is None else None,  # CSGO's blocks are trained in
        guidance=DEFAULT_GUIDANCE if request.guidance is None else request.guidance,
        control_scale=DEFAULT_CONTROL_SCALE if request.control_scale is None else request.control_scale,
        adapters=tuple(dataclasses.replace(use, blocks=blocks(use.blocks)) for use in request.adapters),
        width=request.width or width,
        height=request.height or height,
        seed=request.seed if request.seed is not None else secrets.randbits(32),
        strength=modes.default_strength(request),
        controlnet=request.control and control.controlnet_ref(request.control, family, request.controlnet),
        negative_prompt=request.negative_prompt if request.negative_prompt is not None else "",
    )


def _captioned(request: Request, photo: str | None, what: str, resources: Resources) -> Request:
    """A request without a prompt but with a caption model (``--caption``) gets the caption of ``photo`` (restyle's
    photo, CSGO's content image) as its prompt, so the image records the prompt it was made with."""
    if request.prompt.strip() or request.caption_model is None or photo is None:
        return request
    image = load_image(photo, what, resources.runtime.max_pixels)
    return request.replace(prompt=caption(image, request.caption_model, resources.device, resources.dtype))


@dataclass(frozen=True)
class Adapters:
    """The adapters a call needs in the denoiser: the further ones (slots 1..n, after the main adapter's), the
    slots, and whether they must be loaded for it (other further adapters, or layers whose weights were pruned;
    then the rest is loaded back after the call), keeping the weights of ``keep[i]``'s layers (``None``: all)."""

    further: tuple[str, ...]
    slots: tuple[Slot, ...]
    reload: bool = False
    keep: tuple[frozenset[str], ...] | None = None


@dataclass
class Call:
    """The diffusers call of an applied plan: its pipeline and its arguments."""

    pipe: Any
    kwargs: dict[str, Any]

    def __call__(self, progress: bool = False, on_step: Callable[[int, int], bool | None] | None = None,
                 **changes: Any) -> list[Image.Image]:
        """Run it (with ``changes`` to its arguments): the images. ``on_step(done, total)`` is told after each
        denoising step; when it returns true, the remaining steps are skipped (diffusers' interrupt)."""
        self.pipe.set_progress_bar_config(disable=not progress)
        kwargs = {**self.kwargs, **changes}
        if on_step is not None:
            own = kwargs.get("callback_on_step_end")

            def step_end(call: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                tensors = own(call, step, timestep, tensors) if own is not None else tensors
                if on_step(step + 1, int(call.num_timesteps)):
                    call._interrupt = True  # diffusers' own way out: its loop skips the remaining steps
                return tensors

            kwargs["callback_on_step_end"] = step_end
        return list(self.pipe(**kwargs).images)


@dataclass(frozen=True)
class Plan:
    """What one denoising call needs (see the module docstring); made by ``plan``, run by ``applied``."""

    requests: tuple[Request, ...]  # completed: one, or several sharing the call (``generate_many``)
    adapters: Adapters
    scheduler: str | None  # the sampler's name; ``None``: the model's own
    loras: tuple[tuple[str, float], ...]
    decode: memory.Decode
    kwargs: Mapping[str, Any]  # arguments that need no configured model
    pipeline: Callable[[Plan, Resources], Any]
    before: tuple[Step, ...] = ()
    during: tuple[During, ...] = ()
    after: tuple[After, ...] = ()

    @property
    def request(self) -> Request:
        """The (first) request: the one whose settings the call runs with."""
        return self.requests[0]

    @contextmanager
    def applied(self, resources: Resources) -> Iterator[Call]:
        """The pipeline set as the plan says for the block, yielding its ``Call``; everything as before after it."""
        pipe = resources.pipe
        with ExitStack() as stack:
            files = [resources.adapter.path, *self._further_files(resources)] if self.adapters.reload else []
            stack.enter_context(adapters_applied(pipe, resources.family, self.adapters.slots, files,
                                                 self.adapters.keep, resources.rest))
            stack.enter_context(scheduler_applied(pipe, self.scheduler))
            stack.enter_context(loras_applied(pipe, self.loras))
            stack.enter_context(memory.decode_applied(pipe.vae, self.decode))
            call_pipe = self.pipeline(self, resources)
            kwargs = dict(self.kwargs, generator=torch.Generator("cpu").manual_seed(_seed(self.request)))
            for step in self.before:
                kwargs.update(step(self, resources, call_pipe, kwargs))
            kwargs = modes.fit_call(call_pipe, kwargs, self.request)
            for during in self.during:
                stack.enter_context(during(self, resources, call_pipe))
            yield Call(call_pipe, kwargs)

    def finish(self, images: list[Image.Image], resources: Resources) -> list[list[Image.Image]]:
        """The call's images per request, after the steps after the call."""
        out, start = [], 0
        for request in self.requests:
            mine = images[start : start + request.num_images]
            for step in self.after:
                mine = step(request, mine, resources)
            out.append(mine)
            start += request.num_images
        return out

    def _further_files(self, resources: Resources) -> list[str]:
        return [resources.further_adapter(ref).weights.path for ref in self.adapters.further]


def _seed(request: Request) -> int:
    assert request.seed is not None
    return request.seed


def guidance_of(request: Request) -> float:
    """The guidance of a completed request."""
    assert request.guidance is not None
    return request.guidance


def plan(request: Request, resources: Resources, slots: Sequence[Slot] | None = None,
         together: Sequence[Request] = ()) -> Plan:
    """The plan of a completed, checked request (``slots``: its slots as ``check`` resolved them; ``None``: resolved
    here). ``together``: further completed requests that share its denoising call (``generate_many``): their prompts
    are encoded with its own and their noise is drawn from their own seeds."""
    family = resources.family
    if resources.csgo is not None:  # CSGO's tokens and layers replace the IP-Adapter's slots
        _csgo_parts(request, resources)
        adapters = Adapters((), ())
    else:
        slots = tuple(slots) if slots is not None else routing.slots(request, resources.layers, family)
        adapters = _adapters(request, resources, slots)
    requests = (request, *together)
    for each in requests:
        guards.warn_if_prompts_truncated(resources.pipe, each)
    if request.control is not None:
        resources.controlnet(request.controlnet or "")  # loaded and checked now, before anything changes
    kwargs = _call_arguments(request, resources)
    before: list[Step] = [_text, _style if resources.csgo is None else _csgo_tokens]
    if together:
        kwargs.update(num_images_per_prompt=1, latents=torch.cat([
            family.draw_latents(resources.pipe, r, resources.device, resources.dtype)  # type: ignore[misc]
            for r in requests]))
    if request.style_start > 0 or request.style_end < 1:
        before.append(_schedule)
    during: list[During] = [_never_nan, _denoising]
    if request.restyle is not None:
        before.append(_restyle)
        if guided(request):
            during.append(_csd_guidance)
    if request.hidiffusion:
        during.append(_hidiffusion)
    if resources.csgo is not None:
        during.append(_csgo_scales)
    return Plan(
        requests=requests,
        adapters=adapters,
        scheduler=request.scheduler,
        loras=tuple((lora.path, lora.scale) for lora in request.lora),
        decode=_decode(request, resources, sum(r.num_images for r in requests)),
        kwargs=kwargs,
        pipeline=_mode_pipeline,
        before=tuple(before),
        during=tuple(during),
        after=(_paste_back,) if request.mode == "inpaint" else (),
    )


def _call_arguments(request: Request, resources: Resources) -> dict[str, Any]:
    """The call's arguments that need no configured model: steps, guidance, images per prompt, mode inputs (at the
    request's size; a depth map made by the depth model), region masks."""
    assert request.width is not None and request.height is not None
    depth = resources.depth_model(request.depth_model) if request.depth_model is not None else None
    kwargs: dict[str, Any] = {
        "num_inference_steps": request.steps,
        **resources.family.guidance_kwargs(request),
        "num_images_per_prompt": request.num_images,
        **modes.mode_kwargs(request, depth, resources.runtime.max_pixels),
    }
    masks = routing.region_masks(request, (request.width, request.height), resources.runtime.max_pixels)
    if masks is not None:
        kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": masks}
    return kwargs


def _adapters(request: Request, resources: Resources, slots: tuple[Slot, ...]) -> Adapters:
    """The adapters for the call: loaded for it when the request names further adapters (between requests only the
    main one is loaded) or needs layers whose weights were pruned."""
    further = tuple(use.path for use in request.adapters)
    count = 1 + len(further)
    targets = [{layer for s in slots if s.adapter == i for layer, v in s.scales.items() if v} for i in range(count)]
    held = active_layers(resources.denoiser, resources.family)
    reload = held is None or bool(further) or any(not t <= h for t, h in zip(targets, held, strict=False))
    keep = None if resources.runtime.keeps_all_weights else tuple(
        frozenset(layers) for layers in routing.adapter_layers(slots, count))
    for ref in further:
        resources.further_adapter(ref)  # read and checked against the denoiser now, before anything changes
    return Adapters(further, slots, reload, keep)


def _decode(request: Request, resources: Resources, images: int) -> memory.Decode:
    """How the VAE decodes the call's ``images``: under a memory budget, the whole batch, else whole images one at a
    time, where they fit beside the denoiser, else tiles that fit (``memory.decode_plan``); with ``vae_tiling``,
    tiles of half the native size; else in the VAE's own tiles above ``memory.VAE_TILING_ABOVE`` px only."""
    assert request.width is not None and request.height is not None
    vae = resources.pipe.vae
    if resources.budget is not None:
        controlnet = resources.controlnet(request.controlnet) if request.controlnet else None
        csd = resources.extras.csd(request.csd or "").backbone if guided(request) else None  # beside them, guiding
        resident = (memory.module_bytes(resources.denoiser) + memory.module_bytes(controlnet) + memory.module_bytes(csd)
                    + memory.module_bytes(vae, memory.vae_decode_dtype(vae, resources.dtype)))
        room = resources.budget.limit - resident - memory.DECODE_RESERVE
        return memory.decode_plan(vae, request.width, request.height, resources.dtype, room, images)
    if resources.runtime.vae_tiling:
        return memory.Decode(resources.family.native_size(resources.pipe) // 2, slicing=True)
    large = max(request.width, request.height) > memory.VAE_TILING_ABOVE
    return memory.Decode(memory.own_tile(vae) if large else None)


# --- the pipeline the call runs on ------------------------------------------------------------------------------
def _mode_pipeline(plan: Plan, resources: Resources) -> Any:
    """The diffusers pipeline of the request's mode, sharing the loaded components (its scheduler as set now)."""
    request = plan.request
    controlnet = resources.controlnet(request.controlnet) if request.control is not None and request.controlnet \
        else None
    return modes.mode_pipeline(resources.pipe, resources.family, request, controlnet)


# --- steps before the call ----------------------------------------------------------------------------------
def _text(plan: Plan, resources: Resources, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The prompts (of every request sharing the call, one per image when there are several), encoded now by the
    pipeline's own ``encode_prompt`` as the call would encode them (``Family.encode_prompts``; under a memory budget
    the text encoders are on the device only meanwhile), or the prompts themselves for a family that encodes inside
    its call. In a shared call the negatives go as the first request's own call took them: as text (a family
    encoding in its call; FLUX only with true CFG, which an empty negative turns on), else encoded when it has one."""
    resources.phase("text")
    first = plan.request
    if len(plan.requests) == 1:
        negatives = [first.negative_prompt] if first.negative_prompt else None
        text = text_arguments(resources, [first.prompt], negatives, guidance_of(first))
        return {k: v for k, v in text.items() if k not in plan.kwargs}  # the family's guidance arguments win
    given = plan.kwargs.get("negative_prompt")
    negative = given is not None if "negative_prompt" in plan.kwargs else bool(first.negative_prompt)
    prompts = [r.prompt for r in plan.requests for _ in range(r.num_images)]
    negatives = [r.negative_prompt or "" for r in plan.requests for _ in range(r.num_images)] if negative else None
    return text_arguments(resources, prompts, negatives, guidance_of(first))


def text_arguments(resources: Resources, prompts: list[str], negatives: list[str] | None,
                   guidance: float) -> dict[str, Any]:
    """The call's text arguments for ``prompts`` (see ``_text``)."""
    family, pipe = resources.family, resources.pipe
    if family.encode_prompts is None:
        return {"prompt": prompts, "negative_prompt": negatives}
    cfg = family.guides(pipe, guidance)
    with torch.no_grad(), (resources.budget.using(resources.text_encoders) if resources.budget else memory.nothing()):
        return family.encode_prompts(pipe, prompts, negatives, pipe._execution_device, cfg)


def _style(plan: Plan, resources: Resources, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's image embeddings (``ip_adapter_image_embeds``, as the family takes them): per slot (main style,
    further adapters, then composition) the style and its CFG negative, n = 1 or one per region; content subtracted
    from the main style (InstantStyle)."""
    resources.phase("style")
    request, main = plan.request, resources.main_adapter
    further = [resources.further_adapter(use.path) for use in request.adapters]
    tower = resources.tower_on_device(request.content_text_encoder) if styles.needs_text_tower(request, main) \
        else None
    pairs = styles.slot_embeds(resources.embeddings, request, main, further, tower)
    cfg = resources.family.guides(resources.pipe, guidance_of(request))
    embeds = resources.family.embeds_kwargs(pairs, cfg, resources.device, resources.dtype)
    resources.park_encoders()
    return embeds


def _csgo_parts(request: Request, resources: Resources) -> None:
    """What of a CSGO checkpoint a request needs, read when first needed and kept, as a ControlNet is loaded: the
    content resampler and layers (content injected), its ControlNet made CSGO's; under a memory budget all that stays
    on the device must fit."""
    adapter = resources.csgo
    assert adapter is not None
    if request.content_adapter_scale:
        adapter.need_content(resources.denoiser)
    controlnet = resources.controlnet(request.controlnet or "")  # a CSGO request is completed with its tile one
    adapter.controlnet(controlnet, resources.denoiser)
    if resources.budget is not None:
        memory.check_budget(resources.runtime.memory_budget or 0.0,
                            [resources.denoiser, controlnet, resources.pipe.vae, *adapter.resident()],
                            "the denoiser, the ControlNet, the VAE and CSGO's resamplers")


def _csgo_tokens(plan: Plan, resources: Resources, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """CSGO's step instead of ``_style`` (``core.csgo``): the encoded prompts with its content and style tokens
    appended (``csgo.with_tokens``), the references' and the content image's encoder features each computed once
    (``EmbeddingStore``)."""
    resources.phase("style")
    request, adapter = plan.request, resources.csgo
    assert adapter is not None and request.width is not None and request.height is not None
    if "prompt_embeds" not in kwargs:
        raise RuntimeError("CSGO needs the prompts encoded before the call (an SDXL pipeline)")
    main = resources.main_adapter
    style = resources.embeddings.references(request.style, main, request.style_fit, regions=False)
    content = None
    if adapter.content_projection is not None:  # else no layer holds weights to read the content tokens
        content = resources.embeddings.encode(request.content_image, main, size=(request.width, request.height))
    device, dtype = resources.device, resources.dtype
    return csgo.with_tokens(kwargs, adapter.tokens(content, "content", device, dtype),
                            adapter.tokens(style, "style", device, dtype))


def _schedule(plan: Plan, resources: Resources, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The style schedule: a step callback that turns every slot off outside ``[style_start, style_end)``."""
    callback = routing.schedule_callback(plan.request, resources.denoiser, resources.family, plan.adapters.slots)
    return {"callback_on_step_end": callback} if callback is not None else {}


def guided(request: Request) -> bool:
    """Whether a restyle request is guided by CSD (``style_guidance`` or ``content_guidance``)."""
    return request.csd is not None and bool(request.style_guidance or request.content_guidance)


def _restyle(plan: Plan, resources: Resources, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """InstantStyle-Plus (``modes.restyle``): the photo's ReNoise inversion (a plain pass: the adapters' scales 0
    meanwhile, the model's own scheduler's DDIM), cached per photo, prompt, size, steps and seed; the call starts
    from its inverted latent."""
    request = plan.request
    assert request.restyle is not None
    resources.phase("invert")
    photo = restyle.load_photo(request, resources.runtime.max_pixels)

    def invert() -> torch.Tensor:
        text = text_arguments(resources, [request.prompt], None, 0.0)
        if resources.budget is not None:  # the text encoders are parked again; the denoiser and the VAE invert
            resources.budget.bring([resources.denoiser, resources.pipe.vae])
        with torch.no_grad(), scales_off(resources.denoiser, resources.family):
            return restyle.invert(resources.pipe, make_scheduler("ddim", resources.own_scheduler), text,
                                  kwargs.get("ip_adapter_image_embeds", ()), photo, request, resources.dtype)

    key = restyle.inversion_key(request, image_hash(request.restyle), resources.model_id, resources.dtype)
    return restyle.call_kwargs(resources.inversions.get(key, invert), resources.device, resources.dtype)


# --- contexts during the call -------------------------------------------------------------------------------
def _never_nan(plan: Plan, resources: Resources, pipe: Any) -> AbstractContextManager[Any]:
    """A NaN or inf image is refused, never saved as black (``guards.refuse_nonfinite``)."""
    return guards.refuse_nonfinite(resources.pipe.vae, guards.nonfinite_cause(resources.dtype, plan.request))


@contextmanager
def _denoising(plan: Plan, resources: Resources, pipe: Any) -> Iterator[None]:
    """The denoiser and the VAE on the device under a budget (before HiDiffusion's hooks go on it); the phases told
    (decoding begins when the VAE's decoder first runs)."""
    if resources.budget is not None:
        resources.budget.bring([resources.denoiser, resources.pipe.vae])
    if resources.on_phase is None:
        yield
        return
    resources.phase("denoise")
    told: list[bool] = []

    def decoding(*_: Any) -> None:
        if not told and not torch.is_grad_enabled():  # CSD guidance decodes each step with gradients
            told.append(True)
            resources.phase("decode")

    handle = resources.pipe.vae.decoder.register_forward_pre_hook(decoding)
    try:
        yield
    finally:
        handle.remove()
        resources.phase("end")


def _csd_guidance(plan: Plan, resources: Resources, pipe: Any) -> AbstractContextManager[Any]:
    """InstantStyle-Plus' CSD guidance of every step (``modes.restyle.csd_guidance``); under a memory budget CSD comes
    to the device for the call, as a scorer's models do."""
    request = plan.request
    assert request.csd is not None
    csd = resources.extras.csd(request.csd)
    guidance = restyle.csd_guidance_for(csd, request, resources.runtime.max_pixels)
    if resources.budget is not None and resources.budget.moves:
        resources.budget.make_room(memory.module_bytes(csd.backbone), [])
        csd.to(resources.device)
    return restyle.csd_guidance(resources.pipe, guidance, checkpointing=resources.budget is not None)


def _csgo_scales(plan: Plan, resources: Resources, pipe: Any) -> AbstractContextManager[Any]:
    """CSGO's content and style scales in the UNet's and the ControlNet's layers for the call."""
    request = plan.request
    assert resources.csgo is not None
    controlnet = resources.controlnet(request.controlnet or "")
    return resources.csgo.scales_applied(request, [resources.denoiser, controlnet])


def _hidiffusion(plan: Plan, resources: Resources, pipe: Any) -> AbstractContextManager[Any]:
    """HiDiffusion's hooks on the UNet for the call (``Request.hidiffusion``), one window-shift seed per image of a
    shared call."""
    seeds = [_seed(r) for r in plan.requests for _ in range(r.num_images)] if len(plan.requests) > 1 else None
    return hidiffusion.for_request(resources.family, resources.denoiser, pipe.scheduler, plan.request, seeds)


# --- steps after the call -----------------------------------------------------------------------------------
def _paste_back(request: Request, images: list[Image.Image], resources: Resources) -> list[Image.Image]:
    """Inpainting puts the init image back outside the mask."""
    return modes.paste_back(images, request, resources.runtime.max_pixels)
