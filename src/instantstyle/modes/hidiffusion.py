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
keyed on hub model names, no class is swapped and no module attribute is changed: a family that supports
HiDiffusion names its blocks and switching steps in ``Family.features["hidiffusion"]`` (``hidiffusion_settings``),
and diffusers' own hooks (``diffusers.hooks``: a ``ModelHook`` per module, in its ``HookRegistry``), registered by
``hidiffusion()`` around one generation and removed after it, make the changes, so they compose with IP-Adapter
attention processors, attention LoRAs and diffusers' other hooks. RAD is a forward of the downsampler's own weights
at stride 4 and dilation 2; RAU passes each upsampler the size of the skip connection it meets, the input size of
its mirrored downsampler (what the authors get by raising the UNet's ``num_upsamplers``). The window shifts come
from generators seeded by the caller, one per request of a batched call (the package draws from torch's global
generator; seeding both alike gives the same shifts). ``for_request`` is what ``StylePipeline.prepare`` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

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


#: The name of HiDiffusion's hook in each module's diffusers ``HookRegistry``.
HOOK = "instantstyle.hidiffusion"

PreForward = Callable[[Any, tuple, dict], tuple[tuple, dict]]
PostForward = Callable[[Any, Any], Any]


class _Hook(ModelHook):
    """A diffusers ``ModelHook`` made of functions run before the module's forward and after it, in order."""

    def __init__(self, pre: PreForward | None = None, post: PostForward | None = None) -> None:
        super().__init__()
        self.pres = [pre] if pre is not None else []
        self.posts = [post] if post is not None else []

    def joined(self, other: _Hook) -> _Hook:
        """One hook doing this one's work, then ``other``'s (a module changed for two reasons)."""
        self.pres += other.pres
        self.posts += other.posts
        return self

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        for pre in self.pres:
            args, kwargs = pre(module, args, kwargs)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        for post in self.posts:
            output = post(module, output)
        return output


class _ResolutionAwareDownsampler(ModelHook):
    """RAD: while ``dilating()``, the downsampler's convolution runs its own weights at stride 4, dilation 2."""

    def __init__(self, dilating: Callable[[], bool]) -> None:
        super().__init__()
        self.dilating = dilating

    def new_forward(self, conv: torch.nn.Conv2d, hidden: torch.Tensor) -> torch.Tensor:
        if self.dilating():
            return F.conv2d(hidden, conv.weight, conv.bias, (4, 4), (2, 2), (2, 2), conv.groups)
        own: Any = self.fn_ref.original_forward  # the convolution's forward before this hook
        return cast(torch.Tensor, own(hidden))


def hooks_on(unet: torch.nn.Module) -> int:
    """How many of HiDiffusion's hooks are on the UNet's modules (none outside a ``hidiffusion()`` block)."""
    registries = [getattr(m, "_diffusers_hook", None) for m in unet.modules()]  # HookRegistry's attribute
    return sum(HOOK in r.hooks for r in registries if isinstance(r, HookRegistry))


@contextmanager
def _hooked(hooks: Sequence[tuple[torch.nn.Module, ModelHook]]) -> Iterator[None]:
    """Each hook in its module's diffusers ``HookRegistry`` for the block (a module's hooks joined into one, in
    order), removed after it."""
    joined: dict[torch.nn.Module, ModelHook] = {}
    for module, hook in hooks:
        mine = joined.get(module)
        if mine is None:
            joined[module] = hook
        elif isinstance(mine, _Hook) and isinstance(hook, _Hook):
            mine.joined(hook)
        else:
            raise RuntimeError(f"HiDiffusion: two hooks for {type(module).__name__}, one of them replaces its forward")
    registries: list[HookRegistry] = []
    try:
        for module, hook in joined.items():
            registry = HookRegistry.check_if_exists_or_initialize(module)
            registry.register_hook(hook, HOOK)
            registries.append(registry)
        yield
    finally:
        for registry in reversed(registries):
            registry.remove_hook(HOOK, recurse=False)


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
    pool_from, dilate_from = _res_sample_starts(unet, fam)
    schedules: dict[tuple[int, int], Schedule] = {}
    downsamplers = [block.downsamplers[0] for block in unet.down_blocks if block.downsamplers is not None]
    upsamplers = [block.upsamplers[0] for block in unet.up_blocks if block.upsamplers is not None]
    skip_sizes: dict[int, tuple[int, int]] = {}  # per downsampler: the size of the map it took

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

    def note_skip_size(index: int) -> PreForward:
        def note(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            skip_sizes[index] = tuple(_first(args, kwargs, "hidden_states").shape[-2:])
            return args, kwargs

        return note

    def resolution_aware_upsampler(index: int) -> PreForward:
        """RAU: the upsampler interpolates to the size of the skip connection it meets, the map its mirrored
        downsampler took (a UNet passes that size only when the latent is not a multiple of its overall factor)."""
        def upsample_to_skip(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = _first(args, kwargs, "hidden_states")
            kwargs = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "output_size")}
            return (hidden, skip_sizes[index]), kwargs

        return upsample_to_skip

    def pool_after_first_layer(module: Any, output: Any) -> Any:
        """RAU-Net's pooled phase: the down block continues at half resolution after its first layer."""
        if not state["pool"]:
            return output
        hidden = output[0] if isinstance(output, tuple) else output.sample
        state["pooled_from"] = tuple(hidden.shape[-2:])
        pooled = F.avg_pool2d(hidden, kernel_size=(2, 2), ceil_mode=True)
        return (pooled, *output[1:]) if isinstance(output, tuple) else type(output)(sample=pooled)

    def upsample_after_second_layer(module: Any, output: Any) -> Any:
        """...and the mirrored up block returns to full resolution after its second layer (bicubic)."""
        if not state["pool"]:
            return output
        hidden = output[0] if isinstance(output, tuple) else output.sample
        restored = F.interpolate(hidden, size=state["pooled_from"], mode="bicubic")
        return (restored, *output[1:]) if isinstance(output, tuple) else type(output)(sample=restored)

    def note_map_size(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Transformer2DModel pre-hook: the (H, W) of the map its transformer layers see as tokens."""
        hidden = _first(args, kwargs, "hidden_states")
        state["size"] = (int(hidden.shape[-2]), int(hidden.shape[-1]))
        return args, kwargs

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

    def merge_windows(module: Any, output: torch.Tensor) -> torch.Tensor:
        size, window, shift = state["window"]
        return window_merge(output, size, window, shift)

    hooks: list[tuple[torch.nn.Module, ModelHook]] = [(unet, _Hook(start_call))]
    hooks += [(down, _Hook(note_skip_size(i))) for i, down in enumerate(downsamplers)]
    hooks += [(up, _Hook(resolution_aware_upsampler(len(downsamplers) - 1 - i))) for i, up in enumerate(upsamplers)]
    if raunet:
        hooks.append((unet.get_submodule(fam.dilated_conv), _ResolutionAwareDownsampler(lambda: state["dilate"])))
        hooks.append((unet.get_submodule(f"{fam.pooled_block}.attentions.0"), _Hook(post=pool_after_first_layer)))
        hooks.append((unet.get_submodule(f"{fam.restored_block}.attentions.1"),
                      _Hook(post=upsample_after_second_layer)))
    if window_attention:
        for block in fam.window_blocks:
            for transformer in unet.get_submodule(block):
                hooks.append((transformer, _Hook(note_map_size)))
                windowed = [layer.attn1 for layer in transformer.transformer_blocks]
                hooks += [(attention, _Hook(shifted_windows, merge_windows)) for attention in windowed]
    with _hooked(hooks):
        yield run


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
