"""Where and when the image features act: per-slot block scales, composition, regions, schedule.

Diffusers' IP-Adapter processors zip a list of image embeddings ("slots") with per-slot scales and
to_k_ip/to_v_ip projections. A slot names the loaded adapter whose weights it uses (``blocks.Slot``): the main
adapter's (0) carries the style images to the style blocks, each further adapter's its own, and a composition image
is a last slot on the main adapter's weights, in the layout block. Restyling a photo (InstantStyle-Plus) puts the
photo in a first slot on every layer and the style last, both on the main adapter's weights. Regions give each style
image of a slot its own attention mask; the schedule turns all slots off outside ``[style_start, style_end)`` of the
run. The processors themselves are set in ``processors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..families import Family
from ..files.images import MAX_PIXELS, load_image
from .blocks import Slot, resolve_blocks
from .request import Request

if TYPE_CHECKING:
    import torch



def slots(request: Request, layers: Sequence[str], family: Family,
          main: dict[str, float] | None = None) -> tuple[Slot, ...]:
    """The request's slots, in the order of its image embeddings: the main adapter (the request's blocks, or ``main``
    when they are resolved already), each further adapter (its own blocks), then with a composition image a last
    slot on the main adapter's weights, which takes the layout block (at ``composition_scale``) away from the
    first; restyling a photo, the photo's content first on every layer and the style last. A slot with regions
    weighs each of its style images (its scale inside its region)."""
    def weights(refs: Sequence[Any], regions: Sequence[str]) -> tuple[float, ...] | None:
        return tuple(r.weight for r in refs) if regions else None

    scales = main if main is not None else resolve_blocks(request.blocks, layers, family, request.scale)
    extra = [Slot(i + 1, resolve_blocks(a.blocks, layers, family, a.scale), weights(a.style, a.regions))
             for i, a in enumerate(request.adapters)]
    if request.restyle is not None:  # InstantStyle-Plus (no regions: refused with a photo)
        return (Slot(0, resolve_blocks("all", layers, family, request.restyle_content_scale)), *extra,
                Slot(0, scales))
    if request.composition is None:
        return (Slot(0, scales, weights(request.style, request.regions)), *extra)
    layout = resolve_blocks("layout", layers, family, request.composition_scale)
    first = {layer: s for layer, s in scales.items() if layer not in layout}
    return (Slot(0, first, weights(request.style, request.regions)), *extra, Slot(0, layout))


def adapter_layers(slots: Sequence[Slot], adapters: int) -> list[set[str]]:
    """Per loaded adapter, the layers its slots name (at any scale): the weights a pruned load keeps."""
    return [{layer for slot in slots if slot.adapter == i for layer in slot.scales} for i in range(adapters)]


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
    request: Request, denoiser: Any, family: Family, slots: Sequence[Slot]
) -> Callable[..., dict[str, Any]] | None:
    """A ``callback_on_step_end`` that applies the image features only during ``[style_start, style_end)``
    of the denoising run (fractions of the steps actually run); ``None`` when they act throughout.

    Sets the scales for the first step itself; outside the window every slot's scale is 0, which makes
    diffusers skip the image attention, so ``style_end=0`` is exactly a run without the adapter.
    """
    if request.style_start <= 0 and request.style_end >= 1:
        return None
    from .processors import set_slots

    def apply(fraction: float) -> None:
        set_slots(denoiser, family, slots, on=request.style_start <= fraction < request.style_end)

    apply(0.0)

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        apply((step + 1) / max(pipe.num_timesteps, 1))
        return kwargs

    return callback
