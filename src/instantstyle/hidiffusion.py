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
keyed on hub model names and no class is swapped: the family's blocks are found by name
(``FAMILIES``), and torch hooks, registered by ``hidiffusion()`` around one generation and removed
after it, make the changes, so they compose with IP-Adapter attention processors and attention LoRAs.
The window shifts come from a generator seeded by the caller (the package draws from torch's global
generator; seeding both alike gives the same shifts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .errors import UserError

# --------------------------------------------------------------------------------------------
# Per-family data (moves into the family modules later)


@dataclass(frozen=True)
class Phases:
    """When RAU-Net acts in one resolution range, as fractions of the denoising steps (the paper's T1, T2).

    ``pool``: the pooled phase runs for the first ``int(steps * pool)`` steps; ``dilate``: RAD for the
    first ``int(steps * dilate)``. ``aggressive`` (SDXL): RAD for the first ``int(8 / 50 * steps)`` steps,
    then the pooled phase until ``int(steps * pool)``; ``dilate`` is then unused.
    """

    pool: float
    dilate: float
    aggressive: bool = False


@dataclass(frozen=True)
class HiDiffusionFamily:
    """Where HiDiffusion acts in one model family's UNet, and when (the authors' settings)."""

    name: str
    dilated_conv: str  # the downsampler convolution RAD strides by 4 and dilates by 2
    pooled_block: str  # the down block average-pooled after its first layer in the pooled phase
    restored_block: str  # its mirror among the up blocks: bicubic back to size after its second layer
    window_blocks: tuple[str, ...]  # attention blocks whose transformer layers use MSW-MSA
    large_latent: int  # latent side (both sides) from which ``large`` applies instead of ``normal``
    normal: Phases
    large: Phases
    inpaint: Phases | None = None  # ``normal`` for inpainting, where it differs
    text_controlnet: Phases | None = None  # ``normal`` with a ControlNet in text-to-image, where it differs


#: SDXL base: its second level (640 channels, the highest resolution with attention). Up to a 4096 px
#: side (latent 512) the aggressive variant with T1 = 0.4 (0.5 with a ControlNet; not aggressive for
#: inpainting), above it T1 = 0.7, T2 = 0.3.
SDXL = HiDiffusionFamily(
    name="sdxl",
    dilated_conv="down_blocks.1.downsamplers.0.conv",
    pooled_block="down_blocks.1",
    restored_block="up_blocks.1",
    window_blocks=("down_blocks.1.attentions", "up_blocks.1.attentions"),
    large_latent=512,
    normal=Phases(pool=0.4, dilate=0.0, aggressive=True),
    large=Phases(pool=0.7, dilate=0.3),
    inpaint=Phases(pool=0.4, dilate=0.0),
    text_controlnet=Phases(pool=0.5, dilate=0.0, aggressive=True),
)

#: SD1.5: its first level. Up to a 2048 px side (latent 256) RAD with T1 = 0.4, above it RAD until
#: 0.7 and the pooled phase (second level) until 0.3.
SD15 = HiDiffusionFamily(
    name="sd15",
    dilated_conv="down_blocks.0.downsamplers.0.conv",
    pooled_block="down_blocks.1",
    restored_block="up_blocks.2",
    window_blocks=("down_blocks.0.attentions", "up_blocks.3.attentions"),
    large_latent=256,
    normal=Phases(pool=0.0, dilate=0.4),
    large=Phases(pool=0.3, dilate=0.7),
)

FAMILIES: dict[str, HiDiffusionFamily] = {f.name: f for f in (SDXL, SD15)}

#: The aggressive variant's RAD phase: the first 8 of 50 steps, scaled to the steps run.
AGGRESSIVE_FRACTION = 8 / 50


def family_named(family: str | HiDiffusionFamily) -> HiDiffusionFamily:
    """The HiDiffusion data of a family name; a clear error for a family it has none for."""
    if isinstance(family, HiDiffusionFamily):
        return family
    if family not in FAMILIES:
        raise UserError(f"HiDiffusion works on UNet models ({', '.join(FAMILIES)}), not on {family!r}")
    return FAMILIES[family]


# --------------------------------------------------------------------------------------------
# RAU-Net: when each change acts


@dataclass(frozen=True)
class Schedule:
    """The UNet calls (0-based, one per denoising step) at which RAD and the pooled phase act."""

    dilate: range
    pool: range

    def phase(self, call: int) -> str:
        """``dilate``, ``pool``, ``dilate+pool`` or ``plain``: what RAU-Net does at a call."""
        parts = [name for name, steps in (("dilate", self.dilate), ("pool", self.pool)) if call in steps]
        return "+".join(parts) or "plain"


def switching_schedule(
    family: str | HiDiffusionFamily,
    latent_size: tuple[int, int],
    steps: int,
    *,
    inpaint: bool = False,
    text_controlnet: bool = False,
) -> Schedule:
    """RAU-Net's switching steps (T1, T2 of the paper) for ``steps`` UNet calls at a latent (height, width)."""
    fam = family_named(family)
    phases = fam.normal
    if min(latent_size) >= fam.large_latent:
        phases = fam.large
    elif inpaint and fam.inpaint is not None:
        phases = fam.inpaint
    elif text_controlnet and fam.text_controlnet is not None:
        phases = fam.text_controlnet
    if phases.aggressive:
        start = int(AGGRESSIVE_FRACTION * steps)
        return Schedule(dilate=range(start), pool=range(start, int(steps * phases.pool)))
    return Schedule(dilate=range(int(steps * phases.dilate)), pool=range(int(steps * phases.pool)))


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


def window_partition(
    tokens: torch.Tensor, size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """(B, H*W, C) tokens of an H x W map -> (4B, h*w, C): 2x2 windows of h x w after rolling by ``-shift``.

    A map with an odd side is first resized (bicubic) to twice the window, as the authors do.
    """
    batch, _, channels = tokens.shape
    x = tokens.view(batch, size[0], size[1], channels)
    if size[0] % 2 or size[1] % 2:
        grid = (2 * window[0], 2 * window[1])
        x = F.interpolate(x.permute(0, 3, 1, 2).contiguous(), size=grid, mode="bicubic").permute(0, 2, 3, 1)
        x = x.contiguous()
    if shift != (0, 0):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.view(batch, 2, window[0], 2, window[1], channels).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(-1, window[0] * window[1], channels)


def window_merge(
    windows: torch.Tensor, size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """The inverse of ``window_partition``: (4B, h*w, C) -> (B, H*W, C)."""
    channels = windows.shape[-1]
    batch = windows.shape[0] // 4
    x = windows.view(batch, 2, 2, window[0], window[1], channels).permute(0, 1, 3, 2, 4, 5).contiguous()
    x = x.view(batch, 2 * window[0], 2 * window[1], channels)
    if shift != (0, 0):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
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


def check_unet(unet: Any, family: str | HiDiffusionFamily) -> None:
    """Refuse a UNet HiDiffusion cannot act on (another layout, a compiled UNet), with one clear line."""
    fam = family_named(family)
    if getattr(unet, "_compiled_call_impl", None) is not None or hasattr(unet, "_orig_mod"):
        raise UserError("HiDiffusion cannot act on a compiled UNet (--compile): drop one of the two")
    conv = _module(unet, fam.dilated_conv, "Conv2d")
    if conv.stride != (2, 2) or conv.kernel_size != (3, 3) or conv.padding != (1, 1):
        raise UserError(f"HiDiffusion: {fam.dilated_conv} is not a 3x3 stride-2 downsampler")
    _module(unet, f"{fam.pooled_block}.attentions.0", "Transformer2DModel")
    _module(unet, f"{fam.restored_block}.attentions.1", "Transformer2DModel")
    for block in fam.window_blocks:
        _module(unet, f"{block}.0", "Transformer2DModel")


def _res_sample_starts(unet: Any, fam: HiDiffusionFamily) -> tuple[int, int]:
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
    family: str | HiDiffusionFamily,
    *,
    steps: int,
    seed: int,
    inpaint: bool = False,
    text_controlnet: bool = False,
    raunet: bool = True,
    window_attention: bool = True,
) -> Iterator[HiDiffusionRun]:
    """Apply HiDiffusion to ``unet`` for the generation(s) run inside the ``with`` block; on leaving it the
    UNet is exactly as before (hooks removed, attributes restored).

    ``steps``: UNet calls per generation (``denoising_calls``); calls are counted, and every ``steps`` calls
    start a new generation. ``seed`` seeds MSW-MSA's window shifts. ``inpaint`` / ``text_controlnet`` pick
    the authors' switching steps for inpainting and for a ControlNet in text-to-image. A ControlNet's
    residuals are resized (bicubic) to the skip connections RAU-Net shrank.
    """
    fam = family_named(family)
    check_unet(unet, fam)
    if steps < 1:
        raise UserError(f"HiDiffusion needs at least one denoising step, not {steps}")
    run = HiDiffusionRun(steps)
    shifts = torch.Generator(device="cpu").manual_seed(seed)
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
        shift = window_shift(window, float(torch.rand(1, generator=shifts)))
        state["window"] = (size, window, shift)
        run.windowed += 1
        hidden = _first(args, kwargs, "hidden_states")
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
