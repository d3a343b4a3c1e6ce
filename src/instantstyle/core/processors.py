"""Every edit of diffusers' IP-Adapter attention-processor state, in one place, for the diffusers it was written for.

diffusers' IP-Adapter processors come in two layouts. UNets' ``IPAdapterAttnProcessor2_0`` and FLUX's
``FluxIPAdapterAttnProcessor`` keep per-adapter lists: ``to_k_ip``/``to_v_ip`` projections and ``scale``
(UNets also ``num_tokens``), zipped with the list of image embeddings ("slots") at run time; the denoiser's
``encoder_hid_proj.image_projection_layers`` holds one image projection per slot. SD3's
``SD3IPAdapterJointAttnProcessor2_0`` holds ONE adapter: a single ``to_k_ip``/``to_v_ip`` (plus its own norms)
and a float ``scale``, with the one image projection (a time-conditioned resampler) at ``transformer.image_proj``.
diffusers has no public API for what InstantStyle needs, so this module edits that state directly: per-layer
scales per slot (``set_scales``), extra slots sharing an adapter's weights (``set_slot_count``, list layout
only), and dropping the weights of layers no block targets (``prune_layers``). That layout is private and may
change in any diffusers release, so every function here first checks the installed diffusers against the
versions it was verified with, and refuses another one with one clear message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor
from torch import nn

from ..errors import UserError

if TYPE_CHECKING:
    from ..families import Family

#: diffusers releases (major.minor) whose IP-Adapter processor state this module was verified against.
VERIFIED_DIFFUSERS = ("0.42",)


@cache
def check_diffusers(version: str | None = None) -> None:
    """Refuse a diffusers release this module was not verified with (its private processor layout may differ)."""
    if version is None:
        import diffusers

        version = diffusers.__version__
    if ".".join(version.split(".")[:2]) not in VERIFIED_DIFFUSERS:
        raise UserError(
            f"instantstyle edits diffusers' IP-Adapter attention processors as laid out in diffusers "
            f"{' / '.join(v + '.x' for v in VERIFIED_DIFFUSERS)}; this is diffusers {version}: install "
            f"diffusers=={VERIFIED_DIFFUSERS[-1]}.*"
        )


class TextOnlyAttnProcessor(AttnProcessor2_0):
    """Cross-attention of a layer no block targets: drops the image tokens, holds no adapter weights."""

    text_only = True  # what ``set_scales`` looks for: a layer whose adapter weights are all pruned

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_adapter_masks: object = None,
    ) -> torch.Tensor:
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states = encoder_hidden_states[0]
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class TextOnlyJointAttnProcessor(JointAttnProcessor2_0):
    """An SD3 joint block no block targets: diffusers' plain joint attention (bit-identical to the IP processor at
    scale 0), taking and ignoring the image features and their timestep embedding that the transformer hands
    every block (the plain processor would warn about ``temb`` on every call)."""

    text_only = True

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ip_hidden_states: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> Any:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)  # type: ignore[arg-type]


class _Slots:
    """The part of a FLUX IP processor its ``__call__`` reads, for a subset of its slots."""

    def __init__(self, proc: FluxIPAdapterAttnProcessor, keep: list[int]) -> None:
        self.scale = [proc.scale[i] for i in keep]
        self.to_k_ip = [proc.to_k_ip[i] for i in keep]
        self.to_v_ip = [proc.to_v_ip[i] for i in keep]
        self._attention_backend = proc._attention_backend
        self._parallel_config = proc._parallel_config


class SkippingFluxIPAdapterAttnProcessor(FluxIPAdapterAttnProcessor):
    """diffusers' FLUX IP processor that skips the slots at scale 0 (diffusers computes their image attention
    and adds it times 0: the same values, at a cost, and impossible for a slot whose weights were pruned from
    this layer). The other slots run diffusers' own code."""

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        ip_hidden_states: list[torch.Tensor] | None = None,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> Any:
        keep = [i for i, scale in enumerate(self.scale) if scale != 0]
        slots: Any = self if len(keep) == len(self.scale) else _Slots(self, keep)
        if ip_hidden_states is not None and slots is not self:
            ip_hidden_states = [ip_hidden_states[i] for i in keep]
        return FluxIPAdapterAttnProcessor.__call__(slots, attn, hidden_states, encoder_hidden_states,  # type: ignore[arg-type]
                                                   attention_mask, image_rotary_emb, ip_hidden_states)


def skip_zero_scale_slots(denoiser: Any) -> None:
    """Make every FLUX IP processor of the denoiser skip its slots at scale 0 (``SkippingFluxIPAdapterAttnProcessor``:
    the same object, weights and state; only its call differs)."""
    check_diffusers()
    for proc in denoiser.attn_processors.values():
        if type(proc) is FluxIPAdapterAttnProcessor:
            proc.__class__ = SkippingFluxIPAdapterAttnProcessor


class PrunedProjection(nn.Module):
    """Placeholder for one adapter's to_k_ip/to_v_ip in a layer only other adapters target."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this adapter was pruned from this layer; reload it to target the layer")


def _is_list_layout(proc: Any) -> bool:
    return isinstance(proc.scale, list) and isinstance(proc.to_k_ip, nn.ModuleList)


def _is_single_layout(proc: Any) -> bool:
    return isinstance(proc.scale, (int, float)) and isinstance(proc.to_k_ip, nn.Linear)


def ip_processors(denoiser: Any, family: Family) -> dict[str, Any]:
    """The denoiser's IP-Adapter processors by layer name (``...attn2``, ``transformer_blocks.N.attn``), in
    processor order."""
    check_diffusers()
    import diffusers.models.attention_processor as processors
    import diffusers.models.transformers.transformer_flux as flux

    cls = getattr(processors, family.ip_processor, None) or getattr(flux, family.ip_processor)
    found = {}
    for name, proc in denoiser.attn_processors.items():
        if isinstance(proc, cls):
            if not (_is_list_layout(proc) or _is_single_layout(proc)):
                raise RuntimeError(f"{family.ip_processor} has an unknown layout; processors.py needs support")
            found[name.removesuffix(".processor")] = proc
    return found


def image_projections(denoiser: Any) -> list[Any]:
    """The image projections of the loaded adapters, one per slot (empty when none is loaded): the list layout's
    ``encoder_hid_proj.image_projection_layers``, or SD3's single ``image_proj``."""
    hid = getattr(denoiser, "encoder_hid_proj", None)
    if hid is not None and hasattr(hid, "image_projection_layers"):
        return list(hid.image_projection_layers)
    single = getattr(denoiser, "image_proj", None)
    return [single] if single is not None else []


def prune_layers(denoiser: Any, family: Family, keep: Sequence[set[str]]) -> None:
    """Drop adapter weights from every layer an adapter does not target (InstantStyle: style blocks only).

    ``keep[i]``: the layers adapter ``i`` may be used on. A layer no adapter keeps gets the family's text-only
    processor; a layer only some adapters keep gets ``PrunedProjection`` placeholders for the others."""
    processors = dict(denoiser.attn_processors)
    ip = ip_processors(denoiser, family)
    for name in processors:
        layer = name.removesuffix(".processor")
        if layer not in ip:
            continue
        proc = ip[layer]
        wanted = [layer in k for k in keep]
        if not any(wanted) and family.text_only_processor is not None:
            processors[name] = family.text_only_processor()
            continue
        if not _is_list_layout(proc):
            continue  # one adapter per processor: it is kept whole
        for i, want in enumerate(wanted):
            if not want:
                proc.to_k_ip[i] = PrunedProjection()
                proc.to_v_ip[i] = PrunedProjection()
                proc.scale[i] = 0.0
    denoiser.set_attn_processor(processors)


def set_scales(
    denoiser: Any, family: Family, slots: Sequence[dict[str, float]], weights: Sequence[Sequence[float] | None] = ()
) -> None:
    """Set each slot's scale per layer (a layer a slot's dict does not name gets 0: diffusers then skips it);
    a slot with regions gets one scale per style (times its weight). Raises if a scale is asked of a layer
    whose weights were pruned."""
    ip = ip_processors(denoiser, family)
    for name, proc in denoiser.attn_processors.items():
        layer = name.removesuffix(".processor")
        if layer in ip:
            if _is_single_layout(proc):
                if len(slots) != 1 or any(w is not None for w in weights):
                    raise RuntimeError(f"{family.ip_processor} holds one adapter: one slot, no regions")
                proc.scale = float(slots[0].get(layer, 0.0))
                continue
            for i, per_layer in enumerate(slots):
                value = float(per_layer.get(layer, 0.0))
                if value and isinstance(proc.to_k_ip[i], PrunedProjection):
                    raise RuntimeError(f"adapter {i} was pruned from {layer}")
                per_image = weights[i] if i < len(weights) else None
                proc.scale[i] = [value * w for w in per_image] if per_image is not None else value
        elif getattr(proc, "text_only", False) and any(s.get(layer) for s in slots):
            raise RuntimeError(f"the adapters were pruned from {layer}")


@contextmanager
def scales_off(denoiser: Any, family: Family) -> Iterator[None]:
    """Every adapter slot at scale 0 for the block (diffusers then skips their image attention: the denoiser's plain
    pass, bit for bit), then each scale exactly as it was (a style schedule's or a region's included)."""
    ip = ip_processors(denoiser, family)
    saved = {name: (list(proc.scale) if _is_list_layout(proc) else proc.scale) for name, proc in ip.items()}
    for proc in ip.values():
        proc.scale = [0.0] * len(proc.scale) if _is_list_layout(proc) else 0.0
    try:
        yield
    finally:
        for name, proc in ip.items():
            proc.scale = saved[name]


def set_slot_count(denoiser: Any, family: Family, count: int) -> None:
    """Make the loaded adapters offer ``count`` slots, those past the loaded adapters sharing slot 0's weights
    (the same modules registered twice, no copy). ``count`` must not be below the number of adapters loaded;
    a single-adapter layout (SD3) offers exactly one."""
    hid = getattr(denoiser, "encoder_hid_proj", None)
    if hid is None or not hasattr(hid, "image_projection_layers"):
        if count != 1:
            raise RuntimeError(f"{family.ip_processor} holds one adapter; {count} slots asked for")
        return
    projections = hid.image_projection_layers
    ip = ip_processors(denoiser, family)
    while len(projections) > count:
        del projections[-1]
    while len(projections) < count:
        projections.append(projections[0])
    for proc in ip.values():
        tokens = getattr(proc, "num_tokens", None)
        del proc.to_k_ip[count:], proc.to_v_ip[count:], proc.scale[count:]
        if tokens is not None:
            del tokens[count:]
        while len(proc.to_k_ip) < count:
            proc.to_k_ip.append(proc.to_k_ip[0])
            proc.to_v_ip.append(proc.to_v_ip[0])
            proc.scale.append(0.0)
            if tokens is not None:
                tokens.append(tokens[0])


def adapters_loaded(denoiser: Any) -> bool:
    """Whether diffusers has IP-Adapters loaded in the denoiser (their image projections are there)."""
    return bool(image_projections(denoiser))


def active_layers(denoiser: Any, family: Family) -> list[set[str]] | None:
    """Per loaded adapter, the layers that still hold its weights (``None`` when no adapter is loaded)."""
    if not adapters_loaded(denoiser):
        return None
    held: list[set[str]] = [set() for _ in image_projections(denoiser)]
    for layer, proc in ip_processors(denoiser, family).items():
        projections = proc.to_k_ip if _is_list_layout(proc) else [proc.to_k_ip]
        for i, k in enumerate(projections):
            if not isinstance(k, PrunedProjection):
                held[i].add(layer)
    return held


def adapter_parameter_count(denoiser: Any) -> int:
    """Resident adapter parameters: the image projections plus every layer's adapter weights (read only)."""
    unique = {id(p): p for proj in image_projections(denoiser) for p in proj.parameters()}
    count = sum(p.numel() for p in unique.values())
    for proc in denoiser.attn_processors.values():
        if hasattr(proc, "to_k_ip") and isinstance(proc, nn.Module):
            count += sum(p.numel() for p in proc.parameters())
    return count
