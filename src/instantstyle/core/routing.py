"""Where and when the image features act: per-slot block scales, composition, regions, schedule.

Diffusers' IP-Adapter processors zip a list of image embeddings ("slots") with per-slot scales and
to_k_ip/to_v_ip projections. Composition adds a second slot that shares the first one's weights
(the same modules registered twice, no copy): slot 0 carries the style image to the style blocks,
slot 1 the composition image to the layout block. Restyling a photo (InstantStyle-Plus) puts the photo in a first
slot on every layer and the style last, both on the main adapter's weights. Regions give each style image of
slot 0 its own attention mask; the schedule turns all slots off outside ``[style_start, style_end)`` of the run. The
processor state itself is set in ``processors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..families import Family
from ..files.images import MAX_PIXELS, load_image
from .blocks import resolve_blocks
from .processors import set_scales
from .request import Request


def slot_scales(request: Request, layers: Sequence[str], family: Family) -> list[dict[str, float]]:
    """Per slot ``{layer: scale}``, in the processors' order: the main adapter (the request's blocks), each
    further adapter (its own blocks), then with a composition image a last slot sharing the main
    adapter's weights, which takes the layout block (at ``composition_scale``) away from the first."""
    scales = resolve_blocks(request.blocks, layers, family, request.scale)
    extra = [resolve_blocks(a.blocks, layers, family, a.scale) for a in request.adapters]
    if request.restyle is not None:  # InstantStyle-Plus: the photo's content first on every layer, the style last
        return [resolve_blocks("all", layers, family, request.restyle_content_scale), *extra, scales]
    if request.composition is None:
        return [scales, *extra]
    layout = resolve_blocks("layout", layers, family, request.composition_scale)
    return [{layer: s for layer, s in scales.items() if layer not in layout}, *extra, layout]


def per_image_weights(request: Request) -> list[list[float] | None]:
    """Per slot, the weight of each regional style (its scale inside its region); ``None`` without regions."""
    slots: list[list[float] | None] = [[r.weight for r in request.style] if request.regions else None]
    slots += [[r.weight for r in a.style] if a.regions else None for a in request.adapters]
    return slots + [None] * (request.composition is not None or request.restyle is not None)


def region_masks(request: Request, size: tuple[int, int],
                 max_pixels: int | None = MAX_PIXELS) -> list[torch.Tensor | None] | None:
    """``ip_adapter_masks`` for diffusers: per slot, one mask per style (1, n, H, W) or ``None``; ``None``
    when no adapter has regions."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    per_slot = [request.regions, *(a.regions for a in request.adapters), *[()] * (request.composition is not None)]
    if request.restyle is not None:  # the content slot first (no regions: refused with a photo), the style last
        per_slot = [(), *(a.regions for a in request.adapters), request.regions]
    if not any(per_slot):
        return None
    masks: list[torch.Tensor | None] = []
    for regions in per_slot:
        if not regions:
            masks.append(None)
            continue
        images = [load_image(path, "region mask", max_pixels) for path in regions]
        stack = IPAdapterMaskProcessor().preprocess(images, height=size[1], width=size[0])
        masks.append(stack.reshape(1, stack.shape[0], stack.shape[2], stack.shape[3]))
    return masks


def schedule_callback(
    request: Request, denoiser: Any, family: Family, slots: Sequence[dict[str, float]],
    weights: Sequence[Sequence[float] | None],
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
        set_scales(denoiser, family, slots if on else off, weights)

    apply(0.0)

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        apply((step + 1) / max(pipe.num_timesteps, 1))
        return kwargs

    return callback
