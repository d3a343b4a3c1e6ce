"""Every edit of diffusers' IP-Adapter attention-processor state, in one place, for the diffusers it was written for.

diffusers' IP-Adapter processors (``IPAdapterAttnProcessor2_0`` for UNets) keep per-adapter lists:
``to_k_ip``/``to_v_ip`` projections, ``scale`` and ``num_tokens``, zipped with the list of image
embeddings ("slots") at run time; the denoiser's ``encoder_hid_proj.image_projection_layers`` holds one
image projection per slot. diffusers has no public API for what InstantStyle needs, so this module edits
that state directly: per-layer scales per slot (``set_scales``), extra slots sharing an adapter's weights
(``set_slot_count``), and dropping the weights of layers no block targets (``prune_layers``). That layout
is private and may change in any diffusers release, so every function here first checks the installed
diffusers against the versions it was verified with, and refuses another one with one clear message.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from .errors import UserError

if TYPE_CHECKING:
    from .families import Family

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


class PrunedProjection(nn.Module):
    """Placeholder for one adapter's to_k_ip/to_v_ip in a layer only other adapters target."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this adapter was pruned from this layer; reload it to target the layer")


def ip_processors(denoiser: Any, family: Family) -> dict[str, Any]:
    """The denoiser's IP-Adapter processors by layer name (``...attn2``), in processor order."""
    check_diffusers()
    import diffusers.models.attention_processor as processors

    cls = getattr(processors, family.ip_processor)
    found = {}
    for name, proc in denoiser.attn_processors.items():
        if isinstance(proc, cls):
            if not isinstance(proc.scale, list) or not isinstance(proc.to_k_ip, nn.ModuleList):
                raise RuntimeError(f"{family.ip_processor} holds no per-adapter lists; processors.py needs support")
            found[name.removesuffix(".processor")] = proc
    return found


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
            for i, per_layer in enumerate(slots):
                value = float(per_layer.get(layer, 0.0))
                if value and isinstance(proc.to_k_ip[i], PrunedProjection):
                    raise RuntimeError(f"adapter {i} was pruned from {layer}")
                per_image = weights[i] if i < len(weights) else None
                proc.scale[i] = [value * w for w in per_image] if per_image is not None else value
        elif getattr(proc, "text_only", False) and any(s.get(layer) for s in slots):
            raise RuntimeError(f"the adapters were pruned from {layer}")


def set_slot_count(denoiser: Any, family: Family, count: int) -> None:
    """Make the loaded adapters offer ``count`` slots, those past the loaded adapters sharing slot 0's weights
    (the same modules registered twice, no copy). ``count`` must not be below the number of adapters loaded."""
    projections = denoiser.encoder_hid_proj.image_projection_layers
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
    return getattr(denoiser, "encoder_hid_proj", None) is not None


def active_layers(denoiser: Any, family: Family) -> list[set[str]] | None:
    """Per loaded adapter, the layers that still hold its weights (``None`` when no adapter is loaded)."""
    if not adapters_loaded(denoiser):
        return None
    held: list[set[str]] = [set() for _ in denoiser.encoder_hid_proj.image_projection_layers]
    for layer, proc in ip_processors(denoiser, family).items():
        for i, k in enumerate(proc.to_k_ip):
            if not isinstance(k, PrunedProjection):
                held[i].add(layer)
    return held


def adapter_parameter_count(denoiser: Any) -> int:
    """Resident adapter parameters: the image projections plus every layer's to_k_ip/to_v_ip (read only)."""
    projection = getattr(denoiser, "encoder_hid_proj", None)
    count = sum(p.numel() for p in projection.parameters()) if projection is not None else 0
    for proc in denoiser.attn_processors.values():
        if hasattr(proc, "to_k_ip") and isinstance(proc, nn.Module):
            count += sum(p.numel() for p in proc.parameters())
    return count
