"""HiDiffusion (Zhang et al., ECCV 2024): images above a UNet's native size without duplicated subjects, faster.

Two changes to a pretrained SDXL or SD1.5 UNet, no training:

- **RAU-Net** (resolution-aware U-Net). Object duplication at high resolution comes from the deep blocks
  seeing feature maps far larger than in training. In the early denoising steps, where the layout is
  decided, the outer level of the UNet therefore works at a lower resolution: its downsampler
  convolution is strided by 4 and dilated by 2 (resolution-aware downsampler, RAD), or, in the
  "pooled" phase, its first layer is followed by a 2x2 average pool that the mirrored up block undoes
  by bicubic upsampling after its second layer; the upsamplers interpolate to the size of the skip
  connection they meet (resolution-aware upsampler, RAU). After the switching step T1 the UNet is
  the original. SDXL's "aggressive" variant runs RAD for the first 8/50 of the steps, then the pooled
  phase until T1.
- **MSW-MSA** (modified shifted-window self-attention). The self-attention of the highest-resolution
  transformer layers attends within 2x2 windows of half the feature map's size, shifted on every call
  by a random multiple (0, 1, 2 or 3) of a quarter window; at every step. Attention cost falls 4x there.

Written from the paper and checked against the authors' code (the ``hidiffusion`` package, 0.1.10):
same blocks, switching steps, windows and shifts, so the same pixels. Unlike the package, nothing is
keyed on hub model names and no class is swapped: a family that supports HiDiffusion names its blocks
and switching steps in ``Family.features["hidiffusion"]`` (``hidiffusion_settings``), and torch hooks,
registered by ``hidiffusion()`` around one generation and removed after it, make the changes, so they
compose with IP-Adapter attention processors and attention LoRAs. The window shifts come from generators
seeded by the caller, one per request of a batched call (the package draws from torch's global generator;
seeding both alike gives the same shifts). ``for_request`` is what ``StylePipeline.prepare`` uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..families import Family
from .hidiffusion_settings import HiDiffusionSettings, Schedule, settings_of, switching_schedule

if TYPE_CHECKING:
    from ..core.request import Request

Shift = tuple[int, int]

# --------------------------------------------------------------------------------------------
# How many UNet calls


def denoising_calls(scheduler: Any, steps: int, strength: float | None = None) -> int:
    """How many times a diffusers SD/SDXL pipeline calls the UNet for ``steps`` steps (img2img and
    inpainting: at ``strength``): what ``hidiffusion(steps=...)`` takes. Twice per step for second-order
    schedulers, as diffusers counts them (``len(timesteps)``)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps, device="cpu")
    start = 0 if strength is None else max(steps - min(int(steps * strength), steps), 0)
    return len(probe.timesteps) - start * probe.order


# --------------------------------------------------------------------------------------------
# MSW-MSA: shifted 2x2 windows


def window_shift(window: tuple[int, int], draw: float) -> tuple[int, int]:
    """MSW-MSA's shift for a uniform ``draw`` in [0, 1): 0, 1, 2 or 3 quarters of the window (rounded down)."""
    quarters = 0 if draw <= 0.25 else 1 if draw <= 0.5 else 2 if draw <= 0.75 else 3
    return window[0] // 4 * quarters, window[1] // 4 * quarters


def _roll(x: torch.Tensor, shift: Shift | Sequence[Shift], sign: int) -> torch.Tensor:
    """(B, H, W, C) maps rolled by ``sign * shift``: one shift for every map, or one per map."""
    one = isinstance(shift[0], int)
    shifts = [cast(Shift, shift)] * x.shape[0] if one else list(cast(Sequence[Shift], shift))
    if len(shifts) != x.shape[0]:
        raise RuntimeError(f"HiDiffusion: {len(shifts)} window shifts for a batch of {x.shape[0]}")
    if len(set(shifts)) > 1:
        return torch.cat([_roll(x[i : i + 1], s, sign) for i, s in enumerate(shifts)])
    rows, cols = shifts[0]
    return x if (rows, cols) == (0, 0) else torch.roll(x, shifts=(sign * rows, sign * cols), dims=(1, 2))


def window_partition(
    tokens: torch.Tensor, size: tuple[int, int], window: tuple[int, int], shift: Shift | Sequence[Shift]
) -> torch.Tensor:
    """(B, H*W, C) tokens of an H x W map -> (4B, h*w, C): 2x2 windows of h x w after rolling by ``-shift``
    (one shift for every map of the batch, or one per map).

    A map with an odd side is first resized (bicubic) to twice the window, as the authors do.
    """
    batch, _, channels = tokens.shape
    x = tokens.view(batch, size[0], size[1], channels)
    if size[0] % 2 or size[1] % 2:
        grid = (2 * window[0], 2 * window[1])
        x = F.interpolate(x.permute(0, 3, 1, 2).contiguous(), size=grid, mode="bicubic").permute(0, 2, 3, 1)
        x = x.contiguous()
    x = _roll(x, shift, -1)
    x = x.view(batch, 2, window[0], 2, window[1], channels).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(-1, window[0] * window[1], channels)


def window_merge(
    windows: torch.Tensor, size: tuple[int, int], window: tuple[int, int], shift: Shift | Sequence[Shift]
) -> torch.Tensor:
    """The inverse of ``window_partition``: (4B, h*w, C) -> (B, H*W, C)."""
    channels = windows.shape[-1]
    batch = windows.shape[0] // 4
    x = windows.view(batch, 2, 2, window[0], window[1], channels).permute(0, 1, 3, 2, 4, 5).contiguous()
    x = _roll(x.view(batch, 2 * window[0], 2 * window[1], channels), shift, 1)
    if size[0] % 2 or size[1] % 2:
        x = F.interpolate(x.permute(0, 3, 1, 2).contiguous(), size=size, mode="bicubic").permute(0, 2, 3, 1)
        x = x.contiguous()
    return x.view(batch, size[0] * size[1], channels)


# --------------------------------------------------------------------------------------------
# Applying it around a generation


@dataclass
class HiDiffusionRun:
    """What one ``hidiffusion()`` context did: per UNet call, RAU-Net's phase (see ``Schedule.phase``), and
    how many self-attention calls MSW-MSA windowed."""

    steps: int
    phases: list[str] = field(default_factory=list)
    windowed: int = 0


def _module(unet: Any, name: str, kind: str) -> Any:
    """``unet``'s submodule ``name``, which must be a ``kind``: else the UNet is not of the family's layout."""
    try:
        module = unet.get_submodule(name)
    except AttributeError:
        module = None
    if module is None:
        raise UserError(f"HiDiffusion: this UNet has no {kind} {name!r}; it supports SDXL and SD1.5 layouts")
    if type(module).__name__ != kind or (kind == "Conv2d" and not isinstance(module, torch.nn.Conv2d)):
        # e.g. a peft LoRA layer wrapping the downsampler convolution (also named Conv2d)
        found = f"{type(module).__module__}.{type(module).__name__}"
        raise UserError(f"HiDiffusion: {name} is a {found}, not a plain {kind} (a LoRA on it?)")
    return module


def check_unet(unet: Any, family: str | Family | HiDiffusionSettings) -> None:
    """Refuse a UNet HiDiffusion cannot act on (another layout, a compiled UNet), with one clear line."""
    fam = settings_of(family)
    if getattr(unet, "_compiled_call_impl", None) is not None or hasattr(unet, "_orig_mod"):
        raise UserError("HiDiffusion cannot act on a compiled UNet (--compile): drop one of the two")
    conv = _module(unet, fam.dilated_conv, "Conv2d")
    if conv.stride != (2, 2) or conv.kernel_size != (3, 3) or conv.padding != (1, 1):
        raise UserError(f"HiDiffusion: {fam.dilated_conv} is not a 3x3 stride-2 downsampler")
    _module(unet, f"{fam.pooled_block}.attentions.0", "Transformer2DModel")
    _module(unet, f"{fam.restored_block}.attentions.1", "Transformer2DModel")
    for block in fam.window_blocks:
        _module(unet, f"{block}.0", "Transformer2DModel")


def _res_sample_starts(unet: Any, fam: HiDiffusionSettings) -> tuple[int, int]:
    """Indices of the first skip connection the pooled phase and RAD shrink, in the order the UNet collects
    them (``conv_in``, then per down block one per layer and one per downsampler)."""
    index, pool_from, dilate_from = 1, -1, -1
    for b, block in enumerate(unet.down_blocks):
        if f"down_blocks.{b}" == fam.pooled_block:
            pool_from = index
        index += len(block.resnets)
        if block.downsamplers is not None:
            if f"down_blocks.{b}.downsamplers.0.conv" == fam.dilated_conv:
                dilate_from = index
            index += len(block.downsamplers)
    return pool_from, dilate_from


def _halved(size: Sequence[int], times: int) -> tuple[int, int]:
    """A feature map's size after ``times`` more stride-2 steps (ceil, as the convolutions and pools give)."""
    return math.ceil(size[0] / 2**times), math.ceil(size[1] / 2**times)


def _first(args: tuple, kwargs: dict, name: str) -> Any:
    return args[0] if args else kwargs[name]


@contextmanager
def hidiffusion(
    unet: Any,
    family: str | Family | HiDiffusionSettings,
    *,
    steps: int,
    seed: int | Sequence[int],
    inpaint: bool = False,
    text_controlnet: bool = False,
    raunet: bool = True,
    window_attention: bool = True,
) -> Iterator[HiDiffusionRun]:
    """Apply HiDiffusion to ``unet`` for the generation(s) run inside the ``with`` block; on leaving it the
    UNet is exactly as before (hooks removed, attributes restored).

    ``steps``: UNet calls per generation (``denoising_calls``); calls are counted, and every ``steps`` calls
    start a new generation. ``seed`` seeds MSW-MSA's window shifts: one seed for the whole batch, or one per
    image of a call that batches several requests (in batch order, so each request's images get the shifts
    they would get alone; the CFG halves of an image share them). ``inpaint`` / ``text_controlnet`` pick
    the authors' switching steps for inpainting and for a ControlNet in text-to-image. A ControlNet's
    residuals are resized (bicubic) to the skip connections RAU-Net shrank.
    """
    fam = settings_of(family)
    check_unet(unet, fam)
    if steps < 1:
        raise UserError(f"HiDiffusion needs at least one denoising step, not {steps}")
    run = HiDiffusionRun(steps)
    image_seeds = [seed] if isinstance(seed, int) else list(seed)
    generators = {s: torch.Generator(device="cpu").manual_seed(s) for s in image_seeds}  # one per distinct seed
    state: dict[str, Any] = {"dilate": False, "pool": False, "pooled_from": None, "size": None, "window": None}
    conv = unet.get_submodule(fam.dilated_conv)
    conv_geometry = (conv.stride, conv.padding, conv.dilation)
    pool_from, dilate_from = _res_sample_starts(unet, fam)
    schedules: dict[tuple[int, int], Schedule] = {}
    handles: list[Any] = []
    num_upsamplers = unet.num_upsamplers

    def start_call(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """UNet pre-hook: this call's phase; a ControlNet's residuals resized to the shrunk skip connections."""
        sample = _first(args, kwargs, "sample")
        latent = (int(sample.shape[-2]), int(sample.shape[-1]))
        if latent not in schedules:
            schedules[latent] = switching_schedule(
                fam, latent, steps, inpaint=inpaint, text_controlnet=text_controlnet
            )
        call = len(run.phases) % steps
        phase = schedules[latent].phase(call) if raunet else "plain"
        run.phases.append(phase)
        state["dilate"], state["pool"] = "dilate" in phase, "pool" in phase
        residuals = kwargs.get("down_block_additional_residuals")
        if residuals is not None and phase != "plain":
            kwargs["down_block_additional_residuals"] = [
                _resize(r, (state["pool"] and i >= pool_from) + (state["dilate"] and i >= dilate_from))
                for i, r in enumerate(residuals)
            ]
            mid = kwargs.get("mid_block_additional_residual")
            if mid is not None:
                kwargs["mid_block_additional_residual"] = _resize(mid, state["pool"] + state["dilate"])
        return args, kwargs

    def resolution_aware_downsampler(module: Any, args: tuple) -> None:
        """RAD: in its phase the downsampler convolution strides by 4 with dilation 2 (same weights)."""
        if state["dilate"]:
            module.stride, module.padding, module.dilation = (4, 4), (2, 2), (2, 2)

    def restore_downsampler(module: Any, args: tuple, output: Any) -> None:
        module.stride, module.padding, module.dilation = conv_geometry

    def pool_after_first_layer(module: Any, args: tuple, output: Any) -> Any:
        """RAU-Net's pooled phase: the down block continues at half resolution after its first layer."""
        if not state["pool"]:
            return None
        hidden = output[0] if isinstance(output, tuple) else output.sample
        state["pooled_from"] = tuple(hidden.shape[-2:])
        pooled = F.avg_pool2d(hidden, kernel_size=(2, 2), ceil_mode=True)
        return (pooled, *output[1:]) if isinstance(output, tuple) else type(output)(sample=pooled)

    def upsample_after_second_layer(module: Any, args: tuple, output: Any) -> Any:
        """...and the mirrored up block returns to full resolution after its second layer (bicubic)."""
        if not state["pool"]:
            return None
        hidden = output[0] if isinstance(output, tuple) else output.sample
        restored = F.interpolate(hidden, size=state["pooled_from"], mode="bicubic")
        return (restored, *output[1:]) if isinstance(output, tuple) else type(output)(sample=restored)

    def note_map_size(module: Any, args: tuple, kwargs: dict) -> None:
        """Transformer2DModel pre-hook: the (H, W) of the map its transformer layers see as tokens."""
        hidden = _first(args, kwargs, "hidden_states")
        state["size"] = (int(hidden.shape[-2]), int(hidden.shape[-1]))

    def shifted_windows(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """MSW-MSA: self-attention within 2x2 windows, shifted by a random multiple of a quarter window."""
        size = state["size"]
        window = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        hidden = _first(args, kwargs, "hidden_states")
        draws = {s: window_shift(window, float(torch.rand(1, generator=g))) for s, g in generators.items()}
        shift: Shift | list[Shift] = draws[image_seeds[0]]
        if len(draws) > 1:  # per image (row j of the batch is image j modulo the images: CFG doubles the batch)
            shift = [draws[image_seeds[j % len(image_seeds)]] for j in range(hidden.shape[0])]
        state["window"] = (size, window, shift)
        run.windowed += 1
        windows = window_partition(hidden, size, window, shift)
        if args:
            return (windows, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": windows}

    def merge_windows(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        size, window, shift = state["window"]
        return window_merge(output, size, window, shift)

    try:
        unet.num_upsamplers = 64  # the UNet then always upsamples to the skip connections' sizes (RAU)
        handles.append(unet.register_forward_pre_hook(start_call, with_kwargs=True))
        if raunet:
            handles.append(conv.register_forward_pre_hook(resolution_aware_downsampler))
            handles.append(conv.register_forward_hook(restore_downsampler))
            first = unet.get_submodule(f"{fam.pooled_block}.attentions.0")
            handles.append(first.register_forward_hook(pool_after_first_layer))
            second = unet.get_submodule(f"{fam.restored_block}.attentions.1")
            handles.append(second.register_forward_hook(upsample_after_second_layer))
        if window_attention:
            for block in fam.window_blocks:
                for transformer in unet.get_submodule(block):
                    handles.append(transformer.register_forward_pre_hook(note_map_size, with_kwargs=True))
                    for layer in transformer.transformer_blocks:
                        handles.append(layer.attn1.register_forward_pre_hook(shifted_windows, with_kwargs=True))
                        handles.append(layer.attn1.register_forward_hook(merge_windows))
        yield run
    finally:
        for handle in handles:
            handle.remove()
        conv.stride, conv.padding, conv.dilation = conv_geometry
        unet.num_upsamplers = num_upsamplers


def _resize(residual: torch.Tensor, halvings: int) -> torch.Tensor:
    """A ControlNet residual resized (bicubic, as the authors do) to a skip connection shrunk ``halvings`` times."""
    if not halvings:
        return residual
    return F.interpolate(residual, size=_halved(residual.shape[-2:], halvings), mode="bicubic")


def for_request(
    family: Family, unet: Any, scheduler: Any, request: Request, seeds: Sequence[int] | None = None
) -> AbstractContextManager[HiDiffusionRun]:
    """HiDiffusion around one denoising call of a completed ``request`` (``Request.hidiffusion``): the family's
    settings, the UNet calls of the request's steps and strength with ``scheduler``, the authors' variant for
    its mode, window shifts from its seed (``seeds``: one per image of a call shared by several requests).
    Refuses a family or UNet it cannot act on now, before the call."""
    settings = settings_of(family)
    check_unet(unet, settings)
    assert request.seed is not None
    return hidiffusion(
        unet, settings, steps=denoising_calls(scheduler, request.steps, request.strength),
        seed=request.seed if seeds is None else seeds, inpaint=request.mode == "inpaint",
        text_controlnet=request.mode == "text" and request.control is not None,
    )
