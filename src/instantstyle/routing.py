"""Where and when the image features act: per-slot block scales, composition, regions, schedule.

Diffusers' IP-Adapter processors zip a list of image embeddings ("slots") with per-slot scales and
to_k_ip/to_v_ip projections. Composition adds a second slot that shares the first one's weights
(the same modules registered twice, no copy): slot 0 carries the style image to the style blocks,
slot 1 the composition image to the layout block. Regions give each style image of slot 0 its own
attention mask; the schedule turns all slots off outside ``[style_start, style_end)`` of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from .adapter import set_layer_scales
from .blocks import resolve_blocks
from .embeddings import load_image
from .request import Request


def slot_scales(request: Request, layers: Sequence[str], arch: str) -> list[dict[str, float]]:
    """Per slot ``{layer: scale}``, in the processors' order: the main adapter (the request's blocks), each
    further adapter (its own blocks), then with a composition image a last slot sharing the main
    adapter's weights, which takes the layout block (at ``composition_scale``) away from the first."""
    scales = resolve_blocks(request.blocks, layers, arch, request.scale)
    extra = [resolve_blocks(a.blocks, layers, arch, a.scale) for a in request.adapters]
    if request.composition is None:
        return [scales, *extra]
    layout = resolve_blocks("layout", layers, arch, request.composition_scale)
    return [{layer: s for layer, s in scales.items() if layer not in layout}, *extra, layout]


def per_image_weights(request: Request) -> list[list[float] | None]:
    """Per slot, the weight of each regional style (its scale inside its region); ``None`` without regions."""
    slots: list[list[float] | None] = [[r.weight for r in request.style] if request.regions else None]
    slots += [[r.weight for r in a.style] if a.regions else None for a in request.adapters]
    return slots + [None] * (request.composition is not None)


def set_slot_count(unet: Any, count: int) -> None:
    """Make the loaded adapters offer ``count`` slots, those past the loaded adapters sharing slot 0's weights
    (``count`` must not be below the number of adapters loaded)."""
    projections = unet.encoder_hid_proj.image_projection_layers
    while len(projections) > count:
        del projections[-1]
    while len(projections) < count:
        projections.append(projections[0])
    for proc in unet.attn_processors.values():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            del proc.to_k_ip[count:], proc.to_v_ip[count:], proc.scale[count:], proc.num_tokens[count:]
            while len(proc.to_k_ip) < count:
                proc.to_k_ip.append(proc.to_k_ip[0])
                proc.to_v_ip.append(proc.to_v_ip[0])
                proc.scale.append(0.0)
                proc.num_tokens.append(proc.num_tokens[0])


def set_scales(
    unet: Any, slots: Sequence[dict[str, float]], weights: Sequence[Sequence[float] | None] = ()
) -> None:
    """Set per-slot layer scales; a slot with regions gets one scale per style (times its weight)."""
    set_layer_scales(unet, slots)
    for proc in unet.attn_processors.values():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            for i, per_image in enumerate(weights):
                if per_image is not None:
                    proc.scale[i] = [proc.scale[i] * w for w in per_image]


def region_masks(request: Request, size: tuple[int, int]) -> list[torch.Tensor | None] | None:
    """``ip_adapter_masks`` for diffusers: per slot, one mask per style (1, n, H, W) or ``None``; ``None``
    when no adapter has regions."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    per_slot = [request.regions, *(a.regions for a in request.adapters), *[()] * (request.composition is not None)]
    if not any(per_slot):
        return None
    masks: list[torch.Tensor | None] = []
    for regions in per_slot:
        if not regions:
            masks.append(None)
            continue
        images = [load_image(path, "region mask") for path in regions]
        stack = IPAdapterMaskProcessor().preprocess(images, height=size[1], width=size[0])
        masks.append(stack.reshape(1, stack.shape[0], stack.shape[2], stack.shape[3]))
    return masks


def schedule_callback(
    request: Request, unet: Any, slots: Sequence[dict[str, float]], weights: Sequence[Sequence[float] | None]
) -> Callable[..., dict[str, Any]] | None:
    """A ``callback_on_step_end`` that applies the image features only during ``[style_start, style_end)``
    of the denoising run (fractions of the steps actually run); ``None`` when they act throughout.

    Sets the scales for the first step itself; outside the window every slot's scale is 0, which makes
    diffusers skip the image attention, so ``style_end=0`` is exactly a run without the adapter.
    """
    if request.style_start <= 0 and request.style_end >= 1:
        return None
    off = [dict.fromkeys(s, 0.0) for s in slots]

    def apply(fraction: float) -> None:
        on = request.style_start <= fraction < request.style_end
        set_scales(unet, slots if on else off, weights)

    apply(0.0)

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        apply((step + 1) / max(pipe.num_timesteps, 1))
        return kwargs

    return callback
