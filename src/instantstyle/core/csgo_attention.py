"""CSGO's decoupled cross-attention: our own processor class for the UNet's and the ControlNet's cross-attention.

CSGO appends its image tokens to the text embeddings, ``[text | content (4) | style (16 or 32)]``, and every
cross-attention layer of the UNet and of the ControlNet gets a ``CsgoAttnProcessor`` (set with diffusers'
``set_attn_processor``; diffusers' own processor classes are never changed). Each one cuts the image tokens off,
attends to the text as diffusers' ``AttnProcessor2_0`` does, then adds ``content_scale`` times an attention of the
same queries over the content tokens and ``style_scale`` times one over the style tokens, with the layer's own
key/value projections: the authors' ``IP_CS_AttnProcessor2_0``, term for term and in the same order. A layer holds
projections only for the tokens it takes (``content``, ``style`` or neither: then it is text-only), and skips a
term whose scale is 0 (adding 0 times the term is the same number).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

#: The roles a cross-attention layer can take tokens for.
ROLES = ("content", "style")


class CsgoAttnProcessor(nn.Module):
    """Cross-attention over text, plus content and style tokens where this layer holds projections for them."""

    def __init__(self, content_tokens: int, style_tokens: int) -> None:
        super().__init__()
        self.content_tokens, self.style_tokens = content_tokens, style_tokens
        self.scales = {"content": 0.0, "style": 0.0}
        self.keys = nn.ModuleDict()  # role -> to_k_ip of that role
        self.values = nn.ModuleDict()  # role -> to_v_ip

    def hold(self, role: str, key: torch.Tensor, value: torch.Tensor) -> None:
        """Take the key/value projection weights (``to_k_ip``, ``to_v_ip``: hidden x text width) for ``role``."""
        for modules, weight in ((self.keys, key), (self.values, value)):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
            modules[role] = linear.requires_grad_(False)

    def drop(self, role: str) -> None:
        """Free ``role``'s projections (the layer then never attends to those tokens)."""
        for modules in (self.keys, self.values):
            if role in modules:
                del modules[role]
        self.scales[role] = 0.0

    def holds(self, role: str) -> bool:
        return role in self.keys

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            raise RuntimeError("CsgoAttnProcessor is for cross-attention layers (it needs the text and image tokens)")
        text, content, style = split_tokens(encoder_hidden_states, self.content_tokens, self.style_tokens)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key, value = attn.to_k(text), attn.to_v(text)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def attend(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            out = F.scaled_dot_product_attention(heads(query), heads(k), heads(v), attn_mask=mask, dropout_p=0.0,
                                                 is_causal=False)
            return out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        hidden_states = attend(key, value, attention_mask)
        for role, tokens in (("content", content), ("style", style)):  # the authors' order: content, then style
            scale = self.scales[role]
            if scale and role in self.keys:
                hidden_states = hidden_states + scale * attend(self.keys[role](tokens), self.values[role](tokens))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor  # type: ignore[no-any-return]


def split_tokens(tokens: torch.Tensor, content: int, style: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[text | content | style]`` along the sequence into its three parts."""
    end = tokens.shape[1] - content - style
    return tokens[:, :end], tokens[:, end : end + content], tokens[:, end + content :]


def cross_attention_layers(model: Any) -> list[str]:
    """A UNet's or ControlNet's cross-attention layers (``...attn2``), in ``attn_processors`` order."""
    return [n.removesuffix(".processor") for n in model.attn_processors if n.endswith("attn2.processor")]


def set_processors(model: Any, content_tokens: int, style_tokens: int) -> dict[str, CsgoAttnProcessor]:
    """Give every cross-attention layer of ``model`` (a UNet or ControlNet) a text-only ``CsgoAttnProcessor``; the
    self-attention layers keep theirs. Returns them by layer name (existing ones are kept, with their weights)."""
    processors = dict(model.attn_processors)
    found = csgo_processors(model)
    for name in processors:
        layer = name.removesuffix(".processor")
        if layer.endswith("attn2"):
            if layer not in found:
                found[layer] = CsgoAttnProcessor(content_tokens, style_tokens)
            processors[name] = found[layer]
    model.set_attn_processor(processors)
    return found


def csgo_processors(model: Any) -> dict[str, CsgoAttnProcessor]:
    """The model's CSGO processors by layer name (empty when CSGO is not attached)."""
    return {name.removesuffix(".processor"): proc for name, proc in model.attn_processors.items()
            if isinstance(proc, CsgoAttnProcessor)}


def hold(processors: Mapping[str, CsgoAttnProcessor], role: str,
         weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], device: Any, dtype: torch.dtype) -> None:
    """Give each named layer ``role``'s (to_k_ip, to_v_ip) weights, at the model's device and dtype."""
    for layer, (key, value) in weights.items():
        processors[layer].hold(role, key.to(device, dtype), value.to(device, dtype))


def set_scales(models: Iterable[Any], content: float, style: float) -> None:
    """Set the content and style scale of every CSGO layer of ``models`` (a layer without a role's weights ignores
    that role's scale)."""
    for model in models:
        for proc in csgo_processors(model).values():
            proc.scales.update(content=float(content), style=float(style))


@contextmanager
def scales_applied(models: Sequence[Any], content: float, style: float) -> Iterator[None]:
    """``set_scales`` for the block; every layer's scales as they were after it."""
    before = [(proc, dict(proc.scales)) for model in models for proc in csgo_processors(model).values()]
    set_scales(models, content, style)
    try:
        yield
    finally:
        for proc, scales in before:
            proc.scales.update(scales)


def layers_holding(model: Any, role: str) -> list[str]:
    """The layers of ``model`` that hold ``role``'s projections."""
    return [layer for layer, proc in csgo_processors(model).items() if proc.holds(role)]


def parameter_count(model: Any) -> int:
    """Resident CSGO parameters in ``model``'s layers."""
    return sum(p.numel() for proc in csgo_processors(model).values() for p in proc.parameters())
