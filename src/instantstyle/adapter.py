"""IP-Adapter weights: reading h94-format files, attaching them to the targeted layers only.

Diffusers' own loader (``load_ip_adapter``) and attention processors do the work; this module adds
what InstantStyle needs on top: knowing a file's kind and dimensions before loading, refusing a
file that does not fit the UNet, pruning the adapter weights of every layer no block targets, and
setting per-layer scales.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from torch import nn

from .blocks import cross_attention_layers
from .errors import UserError

AdapterKind = Literal["global", "plus"]
#: A diffusers UNet2DConditionModel (its attention API is dynamic, so typed loosely).
UNet = Any


@dataclass(frozen=True)
class AdapterWeights:
    """An IP-Adapter file read into memory, with what it is and what it fits."""

    path: str
    kind: AdapterKind
    image_embed_dim: int  # global: CLIP projection dim; plus: CLIP hidden size
    cross_attention_dim: int
    num_layers: int
    state_dict: dict[str, dict[str, torch.Tensor]]


def read_adapter(path: str | Path) -> AdapterWeights:
    """Read an h94 IP-Adapter file (flat ``.safetensors`` or legacy ``.bin``) and classify it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"adapter {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
            state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            for key, tensor in flat.items():
                group, _, rest = key.partition(".")
                if group in state:
                    state[group][rest] = tensor
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user error, whatever the library raised
        raise UserError(f"adapter {path}: not a readable weights file ({type(err).__name__})") from None
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise UserError(f"adapter {path}: not an IP-Adapter file (no image_proj / ip_adapter weights)")
    proj, layers = state["image_proj"], state["ip_adapter"]
    kind: AdapterKind
    if "proj.weight" in proj and "norm.weight" in proj:
        kind, embed_dim = "global", proj["proj.weight"].shape[1]
        cross_dim = proj["proj.weight"].shape[0] // 4
    elif "latents" in proj and "proj_in.weight" in proj:
        kind, embed_dim = "plus", proj["proj_in.weight"].shape[1]
        cross_dim = proj["proj_out.weight"].shape[0]
    else:
        raise UserError(f"adapter {path}: unsupported IP-Adapter kind (only global and plus adapters)")
    num_layers = sum(1 for k in layers if k.endswith(".to_k_ip.weight"))
    return AdapterWeights(str(path), kind, int(embed_dim), int(cross_dim), num_layers, state)


def check_adapter_fits(adapter: AdapterWeights, unet: UNet, arch: str) -> None:
    """Refuse an adapter made for another UNet (an SD1.5 adapter on SDXL, say) with a clear message."""
    layers = cross_attention_layers(unet.attn_processors)
    dim = unet.config.cross_attention_dim
    if adapter.num_layers != len(layers) or adapter.cross_attention_dim != dim:
        raise UserError(
            f"adapter {adapter.path} does not fit this {arch} model: it has {adapter.num_layers} layers of "
            f"width {adapter.cross_attention_dim}, the model {len(layers)} cross-attention layers of width {dim}"
        )


class TextOnlyAttnProcessor(AttnProcessor2_0):
    """Cross-attention of a layer no block targets: drops the image tokens, holds no adapter weights."""

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


def attach_adapters(
    pipe: Any, adapters: Sequence[AdapterWeights], keep: Sequence[set[str]] | None = None
) -> None:
    """Load adapters into the pipeline's UNet with diffusers, then prune layers outside ``keep``.

    ``keep[i]`` is the set of cross-attention layers adapter ``i`` may ever be used on; ``None``
    keeps every weight (re-targeting then needs no reload).
    """
    if pipe.unet.encoder_hid_proj is not None:
        pipe.unload_ip_adapter()  # type: ignore[attr-defined]
    quiet = logging.getLogger("diffusers.loaders.ip_adapter")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that no image encoder is loaded: we bring our own
    try:
        pipe.load_ip_adapter(
            [a.state_dict for a in adapters],
            subfolder=[""] * len(adapters),
            weight_name=[""] * len(adapters),
            image_encoder_folder=None,
        )
    finally:
        quiet.setLevel(level)
    if keep is not None:
        prune_adapter_layers(pipe.unet, keep)


def prune_adapter_layers(unet: UNet, keep: Sequence[set[str]]) -> None:
    """Drop adapter weights from every layer an adapter does not target (InstantStyle: style blocks only)."""
    processors = dict(unet.attn_processors)
    for name, proc in processors.items():
        if not isinstance(proc, IPAdapterAttnProcessor2_0):
            continue
        layer = name.removesuffix(".processor")
        wanted = [layer in k for k in keep]
        if not any(wanted):
            processors[name] = TextOnlyAttnProcessor()
            continue
        for i, want in enumerate(wanted):
            if not want:
                proc.to_k_ip[i] = PrunedProjection()
                proc.to_v_ip[i] = PrunedProjection()
                proc.scale[i] = 0.0
    unet.set_attn_processor(processors)


def set_layer_scales(unet: UNet, scales: Sequence[dict[str, float]]) -> None:
    """Set each adapter's scale per layer; a layer an adapter's dict does not name gets 0 (skipped).

    Raises if a scale is asked of a layer whose weights were pruned.
    """
    for name, proc in unet.attn_processors.items():
        layer = name.removesuffix(".processor")
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            for i, per_layer in enumerate(scales):
                value = float(per_layer.get(layer, 0.0))
                if value and isinstance(proc.to_k_ip[i], PrunedProjection):
                    raise RuntimeError(f"adapter {i} was pruned from {layer}")
                proc.scale[i] = value
        elif isinstance(proc, TextOnlyAttnProcessor) and any(s.get(layer) for s in scales):
            raise RuntimeError(f"the adapters were pruned from {layer}")


def active_layers(unet: UNet) -> list[set[str]] | None:
    """Per adapter, the layers that still hold its weights (``None`` when no adapter is loaded)."""
    if unet.encoder_hid_proj is None:
        return None
    held: list[set[str]] = [set() for _ in unet.encoder_hid_proj.image_projection_layers]
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            for i, k in enumerate(proc.to_k_ip):
                if not isinstance(k, PrunedProjection):
                    held[i].add(name.removesuffix(".processor"))
    return held


def adapter_parameter_count(unet: UNet) -> int:
    """Resident adapter parameters: the image projections plus every layer's to_k_ip/to_v_ip."""
    count = sum(p.numel() for p in unet.encoder_hid_proj.parameters()) if unet.encoder_hid_proj else 0
    for proc in unet.attn_processors.values():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            count += sum(p.numel() for p in proc.parameters())
    return count


def file_parameter_count(adapter: AdapterWeights) -> int:
    """Parameters in the adapter file, for the pruned fraction the benchmark reports."""
    return sum(t.numel() for group in adapter.state_dict.values() for t in group.values())
