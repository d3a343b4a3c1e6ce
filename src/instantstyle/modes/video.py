"""A clip restyled frame-consistently: AnyV2V (Ku et al., 2024, "AnyV2V: A Tuning-Free Framework For Any
Video-to-Video Editing Tasks") on diffusers' I2VGen-XL, its first frame made by any instantstyle request.

The paper's steps, one function each:

1. ``style_first_frame``: the first frame is edited by an image model; here by an instantstyle ``Request`` run
   through ``StylePipeline`` (any mode: canny ControlNet by default, as AnyV2V's InstantStyle demo; img2img...), or
   a ready image is taken as it is.
2. ``ddim_inversion``: the source clip is DDIM-inverted with I2VGen-XL conditioned on its own first frame (empty
   prompt, no guidance), keeping the latents of every step.
3. ``sample_with_injection``: DDIM sampling from the inverted latents conditioned on the edited first frame, with
   plug-and-play injection (``plug_and_play``): the source clip's own denoising runs as a third branch beside the
   edit's two (unconditional, conditional), and for the first fractions of the steps its convolution features (the
   second ResNet of the decoder's second block), its spatial self-attention queries and keys and its temporal
   self-attention queries and keys replace the edit's in the decoder's layers 4-11.

Then ``decode_frames``. Everything runs on the loaded ``I2VGenXLPipeline``'s components with our own loop; the
injection is forward hooks that ``plug_and_play`` adds and removes, so the pipeline is as it was after every run
(processors, hooks, scheduler). Numbers are AnyV2V's scripts' (``references/anyv2v/make_reference.py`` runs them on
the test fixtures and the tests compare): the same encodings, the same order of random draws from one generator
seeded with the seed at the start of each phase (the scripts seed the global generator), the same schedules.

Clips longer than one model window (``VideoOptions.window``, I2VGen-XL's 16 frames) run as chained windows: each
window's last frame made is the next window's edited first frame, and the next window inverts the source from the
frame where the previous one ended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..core.request import Request
from ..core.video_options import DEFAULT_VIDEO_MODEL, VideoOptions, VideoRequest, resolve_source, uses_source
from ..errors import UserError
from ..files.atomic import writable_folder
from ..files.images import MAX_PIXELS, load_image
from ..files.video import Clip, fit, read_clip
from ..loading import memory
from ..loading.runtime import Runtime

if TYPE_CHECKING:
    from ..core.pipeline import StylePipeline

#: The phases of a video, in order, as ``on_progress(phase, done, total)`` reports them.
PHASES = ("first-frame", "inversion", "sampling", "decoding")
Progress = Callable[[str, int, int], None]

#: Where AnyV2V (after PnP and TokenFlow) injects attention: ``up_blocks[block].attentions[i]`` (and
#: ``temp_attentions[i]``), "blocks 4-11 of the decoder": not the first layer of the lowest-resolution attention block.
INJECTED_ATTENTION = ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))
#: The ResNet whose features AnyV2V injects: ``up_blocks[1].resnets[1]``, the output of its second convolution.
INJECTED_RESNET = (1, 1)
#: AnyV2V (from TokenFlow) also injects whenever the timestep is 1000, whatever the fractions.
ALWAYS_INJECTED_AT = 1000
#: The inversion's prompt (AnyV2V's ``ddim_inv_prompt``/``inverse_config.prompt``): empty.
INVERSION_PROMPT = ""


# --- the model ---------------------------------------------------------------------------------------------------
@dataclass
class VideoModel:
    """A loaded I2VGen-XL pipeline (diffusers' ``I2VGenXLPipeline``; only its components are used) and where it runs.
    ``branches_per_call``: how many of the sampling step's three branches (source, unconditional, conditional) one UNet
    call runs: 3 (AnyV2V's one batch), 2 (the source apart, then the edit's two) or 1 (each alone); fewer, less
    memory (``memory_plan``)."""

    pipe: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    budget: memory.Budget | None = None
    branches_per_call: int = 3

    @classmethod
    def from_pretrained(cls, model: str | None = None, runtime: Runtime | None = None) -> VideoModel:
        """Load ``model`` (a diffusers folder or hub id; default ``ali-vilab/i2vgen-xl``) as ``runtime`` places it."""
        runtime = runtime or Runtime()
        model = model or DEFAULT_VIDEO_MODEL
        source = check_video_model(model)
        device = runtime.placement()
        dtype = runtime.torch_dtype(device)
        from ..files.logs import quiet

        with quiet("diffusers"):  # I2VGenXLPipeline is marked deprecated in diffusers 0.42; it still loads and runs
            from diffusers import I2VGenXLPipeline

            try:
                pipe = I2VGenXLPipeline.from_pretrained(str(source), torch_dtype=dtype)
            except (OSError, ValueError) as err:
                raise UserError(f"video model {model}: cannot be loaded ({str(err).splitlines()[0]})") from None
        injection_points(pipe.unet, model)
        pipe.set_progress_bar_config(disable=True)
        budget = None
        if runtime.memory_budget is not None:
            budget = memory.Budget(device, int(runtime.memory_budget * memory.GiB))
            memory.place_pipeline(pipe, device, None, budget=True)
            if budget.moves:
                budget.park([pipe.image_encoder])
        elif runtime.offload is not None:
            memory.place_pipeline(pipe, device, runtime.offload)
        else:
            pipe.to(device)
        return cls(pipe, model, device, dtype, budget)

    @contextmanager
    def encoding(self, *modules: torch.nn.Module) -> Iterator[None]:
        """The encoders on the device while they encode (under a memory budget on a GPU only; otherwise they stay
        put): room is made by moving the UNet off if need be, and it comes back after."""
        if self.budget is None or not self.budget.moves:
            yield
            return
        with self.budget.using(list(modules), residents=[self.pipe.unet]):
            yield
        self.budget.bring([self.pipe.unet])


def check_video_model(model: str) -> Path | str:
    """A video model reference as a folder or a hub id, refused in one line when it cannot be an I2VGen-XL
    pipeline (a folder without ``model_index.json``, or one naming another pipeline)."""
    import json

    from ..loading.hub import looks_like_path, require_hub

    if not model.strip():  # Path("") is the working folder: it would be named "."
        raise UserError(f"video model: none given (a diffusers I2VGenXLPipeline folder or hub id, e.g. "
                        f"{DEFAULT_VIDEO_MODEL})")
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"video model {path}: not a diffusers model folder (no model_index.json)")
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            name = None
        if name != "I2VGenXLPipeline":
            raise UserError(f"video model {path}: an {name or 'unknown'} folder; video needs an I2VGenXLPipeline "
                            f"(e.g. {DEFAULT_VIDEO_MODEL})")
        return path
    if path.exists() or looks_like_path(model) or model.count("/") != 1:
        raise UserError(f"video model {model}: no such folder (a diffusers I2VGenXLPipeline folder or hub id)")
    require_hub(("video model", model))
    return model


def injection_points(unet: Any, model: str = "the video model") -> tuple[Any, list[Any], list[Any]]:
    """AnyV2V's injection points in an I2VGen-XL UNet: the ResNet convolution and the spatial and temporal
    self-attention layers; a UNet without them (not I2VGen-XL's topology) is refused."""
    try:
        block, index = INJECTED_RESNET
        conv = unet.up_blocks[block].resnets[index].conv2
        spatial = [unet.up_blocks[b].attentions[i].transformer_blocks[0].attn1 for b, i in INJECTED_ATTENTION]
        temporal = [unet.up_blocks[b].temp_attentions[i].transformer_blocks[0].attn1 for b, i in INJECTED_ATTENTION]
    except (AttributeError, IndexError, TypeError):
        raise UserError(f"{model}: its UNet lacks AnyV2V's injection layers (up blocks 1-3 with spatial and "
                        "temporal attention); video needs an I2VGen-XL UNet") from None
    return conv, spatial, temporal


# --- encodings, exactly as I2VGen-XL's pipeline makes them --------------------------------------------------------
def center_crop_wide(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """I2VGen-XL's crop: shrink by a whole factor (box filter) until the image just covers ``size``, then cut the
    centre."""
    scale = min(image.width / size[0], image.height / size[1])
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=Image.Resampling.BOX)
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def encode_text(pipe: Any, text: str, device: torch.device) -> torch.Tensor:
    """I2VGen-XL's prompt encoding (its pipeline's default ``clip_skip=1``): the CLIP text tower's penultimate hidden
    states through its final layer norm, (1, 77, D)."""
    tokens = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
    encoder = pipe.text_encoder
    hidden = encoder(tokens.to(device), attention_mask=None, output_hidden_states=True).hidden_states[-2]
    norm = encoder.final_layer_norm if hasattr(encoder, "final_layer_norm") else encoder.text_model.final_layer_norm
    return norm(hidden).to(dtype=encoder.dtype, device=device)  # type: ignore[no-any-return]


def encode_image(pipe: Any, image: Image.Image, width: int, device: torch.device) -> torch.Tensor:
    """The first frame's CLIP image embedding, (1, 1, D): a ``width`` square crop resized to the encoder's input
    (bilinear), normalised by the image processor."""
    processor = pipe.feature_extractor
    crop = center_crop_wide(image, (width, width))
    crop = crop.resize((processor.crop_size["width"], processor.crop_size["height"]), Image.Resampling.BILINEAR)
    pixels = pipe.video_processor.numpy_to_pt(pipe.video_processor.pil_to_numpy(crop))
    pixels = processor(images=pixels, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False,
                       return_tensors="pt").pixel_values
    dtype = next(pipe.image_encoder.parameters()).dtype
    return pipe.image_encoder(pixels.to(device=device, dtype=dtype)).image_embeds.unsqueeze(1)  # type: ignore


def vae_latents(pipe: Any, image: Image.Image, size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                generator: torch.Generator) -> torch.Tensor:
    """One frame's scaled VAE latents (1, C, h, w), sampled from the encoder's distribution with ``generator``."""
    pixels = pipe.video_processor.preprocess(center_crop_wide(image, size)).to(device=device, dtype=dtype)
    return pipe.vae.encode(pixels).latent_dist.sample(generator) * pipe.vae.config.scaling_factor  # type: ignore


def first_frame_condition(pipe: Any, image: Image.Image, size: tuple[int, int], frames: int, device: torch.device,
                          dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """I2VGen-XL's image latents (1, C, F, h, w): the first frame's latents, then for frame k a constant k / (F - 1)
    (its position in the clip)."""
    latents = vae_latents(pipe, image, size, device, dtype, generator).unsqueeze(2)
    positions = [torch.ones_like(latents[:, :, :1]) * ((k + 1) / (frames - 1)) for k in range(frames - 1)]
    return torch.cat([latents, *positions], dim=2)


def encode_video(pipe: Any, frames: Sequence[Image.Image], size: tuple[int, int], device: torch.device,
                 dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """The clip's latents (1, C, F, h, w), one frame at a time (AnyV2V's ``encode_vae_video``)."""
    latents = [vae_latents(pipe, frame, size, device, dtype, generator)[0] for frame in frames]
    return torch.stack(latents).unsqueeze(0).permute(0, 2, 1, 3, 4)


# --- step 2: DDIM inversion ---------------------------------------------------------------------------------------
@dataclass
class Inversion:
    """The inverted latents of every inversion step, by timestep (x_t after the step that reaches t)."""

    latents: dict[int, torch.Tensor]

    @property
    def timesteps(self) -> list[int]:
        return sorted(self.latents)


def ddim_inversion(model: VideoModel, frames: Sequence[Image.Image], first_frame: Image.Image, steps: int, fps: int,
                   seed: int, on_step: Callable[[], None] | None = None) -> Inversion:
    """Step 2: DDIM-invert the clip with I2VGen-XL conditioned on its own first frame and the empty prompt, without
    guidance (AnyV2V: ``inverse_config.cfg`` 1.0), keeping x_t at every inversion timestep."""
    from diffusers import DDIMInverseScheduler

    pipe, device, dtype = model.pipe, model.device, model.dtype
    size = frames[0].size
    generator = torch.Generator(device=device).manual_seed(seed)
    video = encode_video(pipe, frames, size, device, dtype, generator)
    with model.encoding(pipe.text_encoder, pipe.image_encoder):
        prompt = encode_text(pipe, INVERSION_PROMPT, device)
        image_embeddings = encode_image(pipe, first_frame, size[0], device)
    image_latents = first_frame_condition(pipe, first_frame, size, len(frames), device, image_embeddings.dtype,
                                          generator)
    scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    fps_tensor = torch.tensor([fps], device=device)
    latents = video * scheduler.init_noise_sigma
    inverted: dict[int, torch.Tensor] = {}
    for t in scheduler.timesteps:
        noise = pipe.unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=prompt, fps=fps_tensor,
                          image_latents=image_latents, image_embeddings=image_embeddings, return_dict=False)[0]
        latents = scheduler.step(noise, t, latents).prev_sample
        inverted[int(t)] = latents
        if on_step is not None:
            on_step()
    return Inversion(inverted)


# --- step 3: sampling with plug-and-play injection -----------------------------------------------------------------
@dataclass(frozen=True)
class Injection:
    """When the inversion's features replace the edit's: the timesteps of each kind of injection."""

    conv: frozenset[int]
    spatial: frozenset[int]
    temporal: frozenset[int]

    @classmethod
    def of(cls, timesteps: Sequence[int], options: VideoOptions) -> Injection:
        """The first ``int(steps * fraction)`` timesteps of the whole schedule, for each fraction (AnyV2V's
        ``init_pnp``: counted before ``init_step`` skips any)."""
        counts = options.injection_steps()
        return cls(*(frozenset(int(t) for t in timesteps[: counts[name]]) for name in ("conv", "spatial", "temporal")))

    def acts(self, kind: str, t: int) -> bool:
        return t in getattr(self, kind) or t == ALWAYS_INJECTED_AT


@dataclass
class _Clock:
    """The timestep the UNet is being run at, read by the injection hooks."""

    t: int = -1


@contextmanager
def plug_and_play(unet: Any, injection: Injection, clock: _Clock, branches: int,
                  recorded: dict[int, torch.Tensor] | None = None, replay: bool = False) -> Iterator[None]:
    """AnyV2V's feature injection as forward hooks, removed on exit: at the injection timesteps, the output of the
    ResNet's second convolution and the queries and keys (``to_q``/``to_k``) of the injected self-attention layers in
    the source branch (the first ``1 / branches`` of the batch: frames for convolutions and spatial attention, pixel
    rows for temporal attention) are copied over the other branches. With ``recorded`` and a batch holding the source
    branch alone, those outputs are kept instead (``replay=False``) or, with ``replay``, the kept ones are copied over
    every branch of a batch without the source branch."""
    conv, spatial, temporal = injection_points(unet)
    targets = [(conv, "conv")] + [(m, "spatial") for a in spatial for m in (a.to_q, a.to_k)]
    targets += [(m, "temporal") for a in temporal for m in (a.to_q, a.to_k)]

    def hook_for(kind: str) -> Callable[..., torch.Tensor]:
        def inject(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            if not injection.acts(kind, clock.t):
                return output
            if recorded is None:
                part = output.shape[0] // branches
                for k in range(1, branches):
                    output[k * part : (k + 1) * part] = output[:part]
            elif not replay:
                recorded[id(module)] = output.clone()
            else:
                source = recorded[id(module)]
                for k in range(output.shape[0] // source.shape[0]):
                    output[k * source.shape[0] : (k + 1) * source.shape[0]] = source
            return output

        return inject

    handles = [module.register_forward_hook(hook_for(kind)) for module, kind in targets]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Conditions:
    """One branch's conditioning: text, image embedding, image latents."""

    text: torch.Tensor
    image: torch.Tensor
    latents: torch.Tensor


def _cat(parts: Sequence[_Conditions]) -> _Conditions:
    return _Conditions(*(torch.cat([getattr(p, name) for p in parts]) for name in ("text", "image", "latents")))


def sample_with_injection(model: VideoModel, inversion: Inversion, edited: Image.Image, source: Image.Image,
                          frames: int, size: tuple[int, int], options: VideoOptions, prompt: str, seed: int,
                          on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Step 3: DDIM sampling from the inverted latents, conditioned on the edited first frame and the prompt with
    classifier-free guidance, the source branch (the inversion's latents at each step, the empty prompt, the source's
    first frame) run beside it to inject its features (``plug_and_play``). Returns the final latents (1, C, F, h, w).

    With guidance at most 1 there is no unconditional branch; the source's features then go to the one edit branch
    (AnyV2V splits that batch in thirds, which mixes frames; we split it in halves)."""
    from diffusers import DDIMScheduler

    pipe, device = model.pipe, model.device
    cfg = options.guidance > 1
    generator = torch.Generator(device=device).manual_seed(seed)
    with model.encoding(pipe.text_encoder, pipe.image_encoder):
        text = encode_text(pipe, prompt, device)
        negative = encode_text(pipe, options.negative_prompt, device) if cfg else None
        source_text = encode_text(pipe, INVERSION_PROMPT, device)
        edited_image = encode_image(pipe, edited, size[0], device)
        source_image = encode_image(pipe, source, size[0], device)
    edited_latents = first_frame_condition(pipe, edited, size, frames, device, edited_image.dtype, generator)
    source_latents = first_frame_condition(pipe, source, size, frames, device, edited_image.dtype, generator)
    source_branch = _Conditions(source_text, source_image, source_latents)
    edit = [_Conditions(text, edited_image, edited_latents)]
    if negative is not None:
        edit.insert(0, _Conditions(negative, torch.zeros_like(edited_image), edited_latents))

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(options.steps, device=device)
    injection = Injection.of(scheduler.timesteps, options)
    timesteps = scheduler.timesteps[options.init_step :]
    missing = [int(t) for t in timesteps if int(t) not in inversion.latents]
    if missing:
        raise UserError(f"sampling step at t={missing[0]} has no inverted latents: choose --inversion-steps so its "
                        f"timesteps include the sampling ones (e.g. equal to --steps, or a multiple)")
    latents = inversion.latents[int(timesteps[0])] * scheduler.init_noise_sigma
    clock = _Clock()
    for t in timesteps:
        clock.t = int(t)
        noise = _predict(model, inversion.latents[int(t)], latents, t, source_branch, edit, injection, clock,
                         options.fps, scheduler)
        if negative is not None:
            uncond, cond = noise.chunk(2)
            noise = uncond + options.guidance * (cond - uncond)
        latents = scheduler.step(noise, t, latents, eta=0.0, generator=generator).prev_sample
        if on_step is not None:
            on_step()
    return latents


def _predict(model: VideoModel, source_latents: torch.Tensor, latents: torch.Tensor, t: torch.Tensor,
             source: _Conditions, edit: list[_Conditions], injection: Injection, clock: _Clock, fps: int,
             scheduler: Any) -> torch.Tensor:
    """The edit branches' noise predictions at ``t``, the source branch run beside them (one batch, as AnyV2V) or
    before them (``branches_per_call`` below 3: its injected features recorded, then replayed into the edit's
    branches, together or one at a time)."""
    unet = model.pipe.unet

    def run(batch: torch.Tensor, cond: _Conditions) -> torch.Tensor:
        fps_tensor = torch.tensor([fps] * batch.shape[0], device=model.device)
        return unet(scheduler.scale_model_input(batch, t), t, encoder_hidden_states=cond.text, fps=fps_tensor,
                    image_latents=cond.latents, image_embeddings=cond.image, return_dict=False)[0]  # type: ignore

    if model.branches_per_call >= 1 + len(edit):
        batch = torch.cat([source_latents] + [latents] * len(edit))
        with plug_and_play(unet, injection, clock, 1 + len(edit)):
            noise = run(batch, _cat([source, *edit]))
        return noise[source_latents.shape[0] :]
    recorded: dict[int, torch.Tensor] = {}
    with plug_and_play(unet, injection, clock, 1, recorded):
        run(source_latents, source)
    groups = [edit] if model.branches_per_call >= len(edit) else [[branch] for branch in edit]
    with plug_and_play(unet, injection, clock, 1, recorded, replay=True):
        return torch.cat([run(torch.cat([latents] * len(group)), _cat(group)) for group in groups])


def decode_frames(model: VideoModel, latents: torch.Tensor, on_frame: Callable[[], None] | None = None
                  ) -> list[Image.Image]:
    """The frames of latents (1, C, F, h, w), decoded one at a time (AnyV2V's ``decode_chunk_size=1``)."""
    pipe = model.pipe
    latents = 1 / pipe.vae.config.scaling_factor * latents
    batch, channels, count, height, width = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * count, channels, height, width)
    images = []
    for k in range(flat.shape[0]):
        images.append(pipe.vae.decode(flat[k : k + 1]).sample)
        if on_frame is not None:
            on_frame()
    video = torch.cat(images).float()
    return pipe.video_processor.postprocess(video, output_type="pil")  # type: ignore[no-any-return]


# --- a memory plan -------------------------------------------------------------------------------------------------
#: Peak activation memory of one I2VGen-XL UNet forward, in bytes per frame of the batch and latent pixel, at 2-byte
#: precision (float16/bfloat16): 21,211 measured by live-tensor tracking of the real-size UNet on the meta device with
#: fused attention (``benchmarks/video.py memory``; the same at batch 1, 2 and 3), rounded up; float32 doubles it.
#: It assumes CUDA's fused attention (flash, which pads I2VGen-XL's 5-wide heads); the math fallback would hold
#: (batch x 64 heads) 4096 x 4096 attention matrices at 512 px.
UNET_ACTIVATION_BYTES = 22_000
#: Working room besides the resident weights and the UNet's activations (decode of one frame, allocator slack).
VIDEO_RESERVE = memory.GiB


@dataclass(frozen=True)
class MemoryPlan:
    """How the sampling step's three branches share the device: ``branches_per_call`` of them per UNet call (3: one
    batch, as AnyV2V; 2: the source branch apart, its injected features kept; 1: every branch alone). ``estimate``:
    the peak bytes expected."""

    branches_per_call: int
    estimate: int


def injected_bytes(channels: Sequence[int], frames: int, width: int, height: int, itemsize: int) -> int:
    """Bytes of the source branch's injected features at one step, for a UNet of ``channels`` (its
    ``block_out_channels``): the ResNet output and the queries and keys of the injected spatial and temporal
    attention layers (what a split run keeps between its two batches)."""
    up = list(reversed(channels))
    latent = (width // 8) * (height // 8)
    shrink = len(up) - 1  # the up block at index b works at 1 / 2 ** (shrink - b) of the latent size

    def pixels(block: int) -> int:
        return latent // 4 ** (shrink - block)

    total = frames * up[INJECTED_RESNET[0]] * pixels(INJECTED_RESNET[0])
    total += sum(2 * 2 * frames * pixels(block) * up[block] for block, _ in INJECTED_ATTENTION)  # q, k; both kinds
    return total * itemsize


def memory_plans(weights: int, channels: Sequence[int], frames: int, width: int, height: int, itemsize: int
                 ) -> list[MemoryPlan]:
    """The estimated peak of 3, 2 and 1 branches per UNet call: ``weights`` (the UNet's and VAE's, resident while
    sampling; the encoders come only to encode) + the UNet's activations (``UNET_ACTIVATION_BYTES`` per frame and
    latent pixel of its batch) + the source features a split run keeps + ``VIDEO_RESERVE``."""
    per_frame = UNET_ACTIVATION_BYTES * itemsize // 2 * (width // 8) * (height // 8)
    kept = injected_bytes(channels, frames, width, height, itemsize)
    return [MemoryPlan(n, weights + n * frames * per_frame + (kept if n < 3 else 0) + VIDEO_RESERVE)
            for n in (3, 2, 1)]


def plan_memory(weights: int, channels: Sequence[int], frames: int, width: int, height: int, itemsize: int,
                budget: int | None) -> MemoryPlan:
    """The first of ``memory_plans`` (3, 2, 1 branches per call) that fits ``budget`` bytes (``None``: no budget,
    3); a ``UserError`` when none fits."""
    plans = memory_plans(weights, channels, frames, width, height, itemsize)
    if budget is None:
        return plans[0]
    for plan in plans:
        if plan.estimate <= budget:
            return plan
    raise UserError(f"--memory-budget {budget / memory.GiB:g}: {frames} frames at {width}x{height} need about "
                    f"{plans[-1].estimate / memory.GiB:.1f} GiB even with one branch per UNet call; raise the budget, "
                    "or lower --window (frames per model run) or --size")


def memory_plan(model: VideoModel, frames: int, width: int, height: int, budget: int | None) -> MemoryPlan:
    """``plan_memory`` for a loaded video model."""
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    weights = memory.module_bytes(model.pipe.unet) + memory.module_bytes(model.pipe.vae)
    return plan_memory(weights, model.pipe.unet.config.block_out_channels, frames, width, height, itemsize, budget)


# --- step 1 and the whole recipe -----------------------------------------------------------------------------------
def ready_first_frame(path: str | Path, size: tuple[int, int], max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Step 1 given: a ready styled first frame (``--first-frame``), fitted to ``size`` as the video takes it."""
    return fit(load_image(path, "first frame", max_pixels), size)


def style_first_frame(pipe: StylePipeline, request: Request, source: str | Path, size: tuple[int, int],
                      on_step: Callable[[int, int], bool | None] | None = None) -> tuple[Image.Image, Request]:
    """Step 1: the first frame edited by an instantstyle request (``SOURCE_FRAME`` read as ``source``, the clip's
    first frame; one image, at the video's size unless the request names one), fitted to ``size``. Returns the
    image and the completed request that made it. ``on_step``: told after each denoising step, as the pipeline's."""
    resolved = resolve_source(request, str(source)).replace(num_images=1)
    if resolved.width is None and resolved.height is None:
        resolved = resolved.replace(width=size[0], height=size[1])
    result = pipe(resolved, on_step=on_step)
    return fit(result.images[0].convert("RGB"), size), result.request


@dataclass(frozen=True)
class Window:
    """One run of the video model: the source frames ``start`` to ``stop`` (exclusive)."""

    start: int
    stop: int


def windows(frames: int, size: int) -> list[Window]:
    """Chained windows of at most ``size`` frames covering ``frames``: each starts on the previous one's last frame
    (that frame, made by the previous window, is the next one's edited first frame)."""
    out = [Window(0, min(size, frames))]
    while out[-1].stop < frames:
        start = out[-1].stop - 1
        out.append(Window(start, min(start + size, frames)))
    return out


def frame_step(options: VideoOptions) -> float:
    """Seconds between the frames taken from the clip: ``1 / fps``, or ``duration / frames`` when given."""
    return options.duration / options.frames if options.duration is not None else 1.0 / options.fps


def read_source(clip: str | Path, options: VideoOptions, max_pixels: int | None = MAX_PIXELS) -> Clip:
    """The frames of the clip the options take (``frame_step`` apart from ``start``), fitted to the video size; at
    least two (one frame is a picture, not a clip)."""
    source = read_clip(clip, options.frames, frame_step(options), options.start, (options.width, options.height),
                       max_pixels=max_pixels)
    if len(source.frames) < 2:
        raise UserError(f"video {clip}: only one frame at or after {options.start:g} s; a video needs two or more")
    return source


@dataclass
class VideoResult:
    """A styled video: its frames, the completed ``VideoRequest`` that reproduces it (seed filled in; the first-frame
    request in template form), the first frame, the request that made that frame (``None``: a ready image), the
    source frames and their times in the clip, and seconds per phase."""

    frames: list[Image.Image]
    video: VideoRequest
    first_frame: Image.Image
    first_frame_request: Request | None
    source_frames: list[Image.Image]
    times: list[float]
    windows: int
    seconds: dict[str, float] = field(default_factory=dict)
    inversions: list[Inversion] = field(default_factory=list)  # with ``keep_latents``

    @property
    def fps(self) -> int:
        return self.video.options.fps

    def metadata(self) -> dict[str, Any]:
        """Plain JSON data about the result: the record, the frames made, their source times, windows, seconds."""
        return {"record": self.video.to_dict(), "frames": len(self.frames), "source_times": self.times,
                "windows": self.windows, "seconds": self.seconds}


def template_of(request: Request, source: str | Path) -> Request:
    """A completed first-frame request with the clip's first-frame file named ``SOURCE_FRAME`` again."""
    from ..core.video_options import SOURCE_FRAME

    changes = {name: SOURCE_FRAME for name in ("init_image", "control_image", "control", "content_image",
                                                "composition") if getattr(request, name) == str(source)}
    return request.replace(**changes) if changes else request


def stylize_video(
    clip: str | Path,
    request: Request,
    options: VideoOptions,
    *,
    video_model: VideoModel | Callable[[], VideoModel],
    style_pipe: StylePipeline | Callable[[], StylePipeline] | None = None,
    source_path: str | Path | None = None,
    max_pixels: int | None = MAX_PIXELS,
    on_progress: Progress | None = None,
    keep_latents: bool = False,
    budget: int | None = None,
    source: Clip | None = None,
) -> VideoResult:
    """The whole recipe on one clip: read the frames, step 1 (the first frame: ``options.first_frame``, else
    ``request`` run by ``style_pipe``, its ``SOURCE_FRAME`` being the clip's first frame written to ``source_path``),
    then per window step 2 (inversion), step 3 (sampling) and decoding. ``video_model`` and ``style_pipe`` may be
    callables that load them, called when first needed (the image model can be freed before the video model loads).
    ``on_progress(phase, done, total)`` follows ``PHASES`` (the first frame: 0 of 1 while its model loads, then its
    denoising steps; counts per window: each window runs inversion, sampling and decoding from 1 to its total);
    ``budget`` (bytes) picks the ``memory_plan``; ``source``: the clip's frames already read (``read_source``)."""
    import secrets
    import tempfile

    tell = on_progress or (lambda phase, done, total: None)
    seconds: dict[str, float] = {}
    source = source or read_source(clip, options, max_pixels)
    size = (options.width, options.height)
    frames = source.frames
    start = time.perf_counter()
    made_by: Request | None = None
    template = request
    if options.first_frame is not None:
        first = ready_first_frame(options.first_frame, size, max_pixels)
    else:
        if style_pipe is None:
            raise UserError("the first frame needs an image model (a StylePipeline) or a ready --first-frame")
        path = Path(source_path) if source_path is not None else Path(tempfile.mkdtemp()) / "source-frame.png"
        if uses_source(request):
            frames[0].save(path)
        tell("first-frame", 0, 1)
        from ..core.pipeline import StylePipeline

        pipe = style_pipe if isinstance(style_pipe, StylePipeline) else style_pipe()
        first, made_by = style_first_frame(pipe, request, path, size,
                                           on_step=lambda done, total: tell("first-frame", done, total))
        template = template_of(made_by, path)
        if pipe is not style_pipe:  # loaded here: freed before the video model comes
            del pipe
            memory.return_freed_memory()
    seconds["first-frame"] = time.perf_counter() - start
    seed = options.seed if options.seed is not None else template.seed
    if seed is None:
        seed = secrets.randbelow(2**32)
    options = options.replace(seed=seed)
    model = video_model if isinstance(video_model, VideoModel) else video_model()
    parts = windows(len(frames), options.window)
    plan = memory_plan(model, max(w.stop - w.start for w in parts), *size, budget)
    model = dataclasses.replace(model, branches_per_call=plan.branches_per_call)

    def step(phase: str, total: int) -> Callable[[], None]:
        done = [0]

        def advance() -> None:
            done[0] += 1
            tell(phase, done[0], total)

        return advance

    made: list[Image.Image] = []
    inversions = []
    edited = first
    for window in parts:
        chunk = frames[window.start : window.stop]
        with torch.no_grad():
            began = time.perf_counter()
            inversion = ddim_inversion(model, chunk, chunk[0], options.inversion_steps, options.fps, seed,
                                       step("inversion", options.inversion_steps))
            seconds["inversion"] = seconds.get("inversion", 0.0) + time.perf_counter() - began
            began = time.perf_counter()
            latents = sample_with_injection(model, inversion, edited, chunk[0], len(chunk), size, options,
                                            options.prompt if options.prompt is not None else template.prompt, seed,
                                            step("sampling", options.steps - options.init_step))
            seconds["sampling"] = seconds.get("sampling", 0.0) + time.perf_counter() - began
            if not torch.isfinite(latents).all():
                raise UserError(f"the video's latents hold NaN or inf values ({str(model.dtype).split('.')[-1]} "
                                "overflow, or extreme settings): nothing is written; try --dtype float32")
            began = time.perf_counter()
            decoded = decode_frames(model, latents, step("decoding", len(chunk)))
            seconds["decoding"] = seconds.get("decoding", 0.0) + time.perf_counter() - began
        made.extend(decoded if not made else decoded[1:])
        edited = decoded[-1]
        if keep_latents:
            inversions.append(inversion)
        del inversion, latents
    record = VideoRequest(str(clip), template, options)
    return VideoResult(made, record, first, made_by, frames, source.times, len(parts), seconds, inversions)



# --- the files of a video ------------------------------------------------------------------------------------------
#: The PNG text chunk of the styled first frame that holds the video's record (``VideoRequest`` JSON).
PNG_VIDEO_KEY = "instantstyle-video"


#: The clip's first frame a video run writes beside its output (an input, not an image made).
SOURCE_SUFFIX = ".source.png"


@dataclass(frozen=True)
class VideoFiles:
    """What a video run writes: ``OUT.mp4`` (its record in the container's metadata), beside it ``OUT.first.png``
    (the styled first frame; its PNG carries the request that made it and the video's record), ``OUT.json`` (the
    record: ``instantstyle video --from OUT.json`` or a batch job line), ``OUT.source.png`` (the clip's first frame, the
    first-frame request's input) and, when scored, ``OUT.scores.json``."""

    video: Path
    first_frame: Path
    record: Path
    source: Path
    scores: Path

    @classmethod
    def beside(cls, output: str | Path) -> VideoFiles:
        video = Path(output).expanduser()
        stem = video.with_suffix("")
        return cls(video, stem.with_name(stem.name + ".first.png"), stem.with_name(stem.name + ".json"),
                   stem.with_name(stem.name + SOURCE_SUFFIX), stem.with_name(stem.name + ".scores.json"))

    def all(self) -> list[Path]:
        return [self.video, self.first_frame, self.record, self.source, self.scores]


def check_outputs(output: str | Path, overwrite: bool = False) -> VideoFiles:
    """The files of ``output`` (``.mp4``, ``.mov`` or ``.mkv``), refused in one line when one exists (unless
    ``overwrite``) or their folder cannot be made or written."""
    from ..files.video import VIDEO_SUFFIXES

    files = VideoFiles.beside(output)
    if files.video.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"output {output}: must end in {', '.join(VIDEO_SUFFIXES)}")
    if files.video.is_dir():
        raise UserError(f"output {output}: is a folder")
    writable_folder(files.video.parent, f"output {output}: its folder {files.video.parent}", made="cannot be created")
    if not overwrite:
        for path in files.all():
            if path.exists():
                raise UserError(f"output {path} exists; pass --overwrite to replace it")
    return files


def save_video(result: VideoResult, files: VideoFiles) -> VideoFiles:
    """Write the video (its record in the metadata), the styled first frame (with the request that made it and the
    record) and the record, each atomically, the video first."""
    from ..core.request import write_png
    from ..files.atomic import save_png_atomically, write_text_atomically
    from ..files.video import write_video

    record = result.video.to_dict()
    write_video(files.video, result.frames, result.fps, record)
    extra = {PNG_VIDEO_KEY: result.video.to_json()}
    if result.first_frame_request is not None:
        write_png(result.first_frame, files.first_frame, result.first_frame_request, extra=extra)
    else:
        save_png_atomically(result.first_frame, files.first_frame, extra)
    write_text_atomically(files.record, result.video.to_json() + "\n")
    return files


def read_video_request(path: str | Path) -> VideoRequest:
    """The ``VideoRequest`` a made video carries: its ``OUT.json``, the video itself (metadata) or its
    ``OUT.first.png``; a one-line ``UserError`` when the file carries none."""
    from ..core.request import read_png_text
    from ..files.textfiles import read_small_text
    from ..files.video import read_video_record

    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".json":
        text: str | None = read_small_text(path, "video record", 1_000_000, "a video record")
    elif suffix == ".png":
        text = read_png_text(path, PNG_VIDEO_KEY)
    else:
        text = read_video_record(path)
    if text is None:
        raise UserError(f"{path}: carries no instantstyle video record")
    try:
        return VideoRequest.from_json(text)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def check_schedule(model: str, options: VideoOptions) -> None:
    """Every sampling timestep (after ``init_step``) is one the inversion reaches, read from the video model's
    scheduler config alone (no weights): else a one-line ``UserError`` naming step counts that work."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    source = check_video_model(model)
    try:
        if isinstance(source, Path):
            config = DDIMScheduler.load_config(str(source / "scheduler"))
        else:
            config = DDIMScheduler.load_config(source, subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise UserError(f"video model {model}: no readable scheduler config ({str(err).splitlines()[0]})") from None
    inverse = DDIMInverseScheduler.from_config(config)
    inverse.set_timesteps(options.inversion_steps)
    sampler = DDIMScheduler.from_config(config)
    sampler.set_timesteps(options.steps)
    reached = {int(t) for t in inverse.timesteps}
    missing = [int(t) for t in sampler.timesteps[options.init_step :] if int(t) not in reached]
    if missing:
        raise UserError(f"--steps {options.steps} samples at t={missing[0]}, which --inversion-steps "
                        f"{options.inversion_steps} never reaches; use inversion steps equal to --steps or a multiple "
                        f"of it (e.g. {options.steps} or {2 * options.steps})")
