"""The IP-Adapter attention processors InstantStyle runs: diffusers' own attention code, the slots and scales ours.

diffusers' public loader (``load_ip_adapter``) reads an adapter's weights into its processors and image projection;
``take_over`` then installs processor classes of our own with diffusers' public ``set_attn_processor``, handing
them those weights:

- ``SlotAttnProcessor`` (UNet families) and ``SlotFluxAttnProcessor`` (FLUX) subclass diffusers' IP-Adapter
  processors and run their ``__call__`` unchanged, so the attention is diffusers' to the bit. What differs is the
  state that code reads. diffusers keeps one ``to_k_ip``/``to_v_ip``/``scale`` entry per loaded adapter, zipped with
  the image embeddings of the call ("slots"). Ours keep each loaded adapter's weights once (``adapter_k`` /
  ``adapter_v``, by adapter index, and only in the layers a block may target) and a list of ``Slot``s, each naming
  the adapter whose weights it uses and its scale here; ``to_k_ip``, ``to_v_ip`` and ``scale`` are read from them.
  So the composition image (a second slot on the main adapter's weights, see ``routing``) registers no module
  twice. ``SlotFluxAttnProcessor`` also leaves the slots at scale 0 out of the call (diffusers would compute their
  image attention and add it times 0: the same values, at a cost, and impossible where the weights were pruned).
- ``SlotImageProjection`` (the denoiser's ``encoder_hid_proj``) projects each slot's embeddings with its adapter's
  image projection.
- SD3's processor (``SD3IPAdapterJointAttnProcessor2_0``) holds one adapter and a float ``scale``, its constructor's
  argument: one slot, whose scale is set per layer.
- A layer no adapter keeps gets the family's text-only processor, which holds no adapter weights.

``slots_applied`` sets the slots for one call and puts the previous ones back after it. What is read of diffusers'
classes is checked when they are taken over (``check_layout``): a diffusers release that lays them out otherwise is
refused with one clear message instead of making a wrong image; no version is pinned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    JointAttnProcessor2_0,
)
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor
from torch import nn

from .blocks import Slot

if TYPE_CHECKING:
    from ..families import Family


class TextOnlyAttnProcessor(AttnProcessor2_0):
    """Cross-attention of a layer no block targets: drops the image tokens, holds no adapter weights."""

    text_only = True  # a layer whose adapter weights are all pruned

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


class PrunedProjection(nn.Module):
    """What a slot reads as its to_k_ip/to_v_ip in a layer its adapter was pruned from (its scale there is 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this adapter was pruned from this layer; reload it to target the layer")


_PRUNED = PrunedProjection()


class _SlotState:
    """The state diffusers' IP processor ``__call__`` reads (``scale``, ``to_k_ip``, ``to_v_ip``, ``num_tokens``),
    per slot, from each adapter's weights (held once) and the slots."""

    adapter_k: nn.ModuleDict  # adapter index (as text) -> its to_k_ip in this layer; absent: pruned here
    adapter_v: nn.ModuleDict
    adapter_tokens: list[int]  # image tokens per adapter (UNet processors)
    slot_adapters: list[int]
    slot_scales: list[float | list[float]]
    skips_zero = False  # whether slots at scale 0 are left out of the call (FLUX)

    def _take(self, source: Any, keep: Sequence[bool]) -> None:
        self.hidden_size, self.cross_attention_dim = source.hidden_size, source.cross_attention_dim
        self.adapter_k = nn.ModuleDict({str(i): source.to_k_ip[i] for i, kept in enumerate(keep) if kept})
        self.adapter_v = nn.ModuleDict({str(i): source.to_v_ip[i] for i, kept in enumerate(keep) if kept})
        self.adapter_tokens = list(getattr(source, "num_tokens", [0] * len(keep)))
        self.slot_adapters = list(range(len(keep)))
        self.slot_scales = [float(s) if kept else 0.0 for s, kept in zip(source.scale, keep, strict=True)]

    def holds(self, adapter: int) -> bool:
        """Whether this layer holds the weights of loaded adapter ``adapter``."""
        return str(adapter) in self.adapter_k

    def _shown(self) -> list[int]:
        return [i for i, s in enumerate(self.slot_scales)
                if not self.skips_zero or (any(s) if isinstance(s, list) else s != 0)]

    @property
    def scale(self) -> list[float | list[float]]:
        return [self.slot_scales[i] for i in self._shown()]

    @property
    def to_k_ip(self) -> list[nn.Module]:
        return [self.adapter_k[str(self.slot_adapters[i])] if self.holds(self.slot_adapters[i]) else _PRUNED
                for i in self._shown()]

    @property
    def to_v_ip(self) -> list[nn.Module]:
        return [self.adapter_v[str(self.slot_adapters[i])] if self.holds(self.slot_adapters[i]) else _PRUNED
                for i in self._shown()]

    @property
    def num_tokens(self) -> list[int]:
        return [self.adapter_tokens[self.slot_adapters[i]] for i in self._shown()]


class SlotAttnProcessor(_SlotState, IPAdapterAttnProcessor2_0):
    """diffusers' UNet IP-Adapter processor (its ``__call__``) on our slots (see the module docstring)."""

    def __init__(self, source: IPAdapterAttnProcessor2_0, keep: Sequence[bool]) -> None:
        nn.Module.__init__(self)
        self._take(source, keep)


class SlotFluxAttnProcessor(_SlotState, FluxIPAdapterAttnProcessor):  # type: ignore[misc]
    """diffusers' FLUX IP-Adapter processor (its ``__call__``) on our slots, the slots at scale 0 left out."""

    skips_zero = True

    def __init__(self, source: FluxIPAdapterAttnProcessor, keep: Sequence[bool]) -> None:
        nn.Module.__init__(self)
        self._take(source, keep)

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
        if ip_hidden_states is not None:
            ip_hidden_states = [ip_hidden_states[i] for i in self._shown()]
        return super().__call__(attn, hidden_states, encoder_hidden_states,  # type: ignore[arg-type]
                                attention_mask, image_rotary_emb, ip_hidden_states)


#: diffusers' list-layout IP processor classes and the class of ours that takes each over.
OURS = {IPAdapterAttnProcessor2_0: SlotAttnProcessor, FluxIPAdapterAttnProcessor: SlotFluxAttnProcessor}


class SlotImageProjection(MultiIPAdapterImageProjection):
    """The denoiser's ``encoder_hid_proj``: each slot's image embeddings through its adapter's image projection
    (diffusers' ``forward``, on ``image_projection_layers`` read per slot; each projection registered once)."""

    def __init__(self, source: MultiIPAdapterImageProjection) -> None:
        nn.Module.__init__(self)
        self.adapters = source.image_projection_layers
        self.slot_adapters = list(range(len(self.adapters)))

    @property
    def image_projection_layers(self) -> list[nn.Module]:  # type: ignore[override]
        return [self.adapters[i] for i in self.slot_adapters]


def check_layout(proc: Any) -> None:
    """Refuse diffusers' IP processor if it is not laid out as this module reads it (per-adapter ``scale``,
    ``to_k_ip`` and ``to_v_ip`` lists; SD3: one adapter, a float ``scale``)."""
    lists = isinstance(getattr(proc, "scale", None), list) and isinstance(getattr(proc, "to_k_ip", None), nn.ModuleList)
    single = isinstance(getattr(proc, "scale", None), (int, float)) and isinstance(getattr(proc, "to_k_ip", None),
                                                                                    nn.Linear)
    if not (lists or single):
        import diffusers

        raise RuntimeError(
            f"diffusers {diffusers.__version__}'s {type(proc).__name__} keeps its adapters' weights and scales in a "
            "layout instantstyle does not know (per-adapter to_k_ip/to_v_ip/scale lists, or one adapter with a "
            "float scale); instantstyle's processors.py needs support for it")


def ip_processors(denoiser: Any, family: Family) -> dict[str, Any]:
    """The denoiser's IP-Adapter processors (ours, or SD3's single-adapter one) by layer name, in processor order."""
    found = {}
    for name, proc in denoiser.attn_processors.items():
        if isinstance(proc, _SlotState) or type(proc).__name__ == family.ip_processor:
            found[name.removesuffix(".processor")] = proc
    return found


def image_projections(denoiser: Any) -> list[Any]:
    """The image projections of the loaded adapters, one per adapter (empty when none is loaded)."""
    hid = getattr(denoiser, "encoder_hid_proj", None)
    if isinstance(hid, SlotImageProjection):
        return list(hid.adapters)
    if hid is not None and hasattr(hid, "image_projection_layers"):
        return list(hid.image_projection_layers)
    single = getattr(denoiser, "image_proj", None)
    return [single] if single is not None else []


def take_over(denoiser: Any, family: Family, keep: Sequence[set[str] | frozenset[str]] | None = None) -> None:
    """After diffusers' loader: our processors and image projection on the loaded adapters' weights, one slot per
    adapter at diffusers' scale (1), each adapter's weights kept only in the layers of ``keep[i]`` (``None``: all).
    A layer no adapter keeps gets the family's text-only processor."""
    processors = dict(denoiser.attn_processors)
    for name, proc in processors.items():
        layer = name.removesuffix(".processor")
        if type(proc).__name__ != family.ip_processor:
            continue
        check_layout(proc)
        count = len(proc.scale) if isinstance(proc.scale, list) else 1
        wanted = [True] * count if keep is None else [layer in k for k in keep]
        if not any(wanted) and family.text_only_processor is not None:
            processors[name] = family.text_only_processor()
        elif type(proc) in OURS:
            processors[name] = OURS[type(proc)](proc, wanted)
    denoiser.set_attn_processor(processors)
    hid = getattr(denoiser, "encoder_hid_proj", None)
    if isinstance(hid, MultiIPAdapterImageProjection) and not isinstance(hid, SlotImageProjection):
        denoiser.encoder_hid_proj = SlotImageProjection(hid)


@dataclass(frozen=True)
class SlotState:
    """Every processor's slots and scales and the projection's slots, as ``slot_state`` read them."""

    layers: tuple[tuple[Any, tuple[int, ...], tuple[Any, ...]], ...]
    projection: tuple[int, ...] | None


def slot_state(denoiser: Any, family: Family) -> SlotState:
    """The slots and scales set now (to put back with ``restore_slots``)."""
    layers = []
    for proc in ip_processors(denoiser, family).values():
        if isinstance(proc, _SlotState):
            scales = tuple(list(s) if isinstance(s, list) else s for s in proc.slot_scales)
            layers.append((proc, tuple(proc.slot_adapters), scales))
        else:
            layers.append((proc, (0,), (proc.scale,)))
    hid = getattr(denoiser, "encoder_hid_proj", None)
    return SlotState(tuple(layers), tuple(hid.slot_adapters) if isinstance(hid, SlotImageProjection) else None)


def restore_slots(denoiser: Any, state: SlotState) -> None:
    for proc, adapters, scales in state.layers:
        if isinstance(proc, _SlotState):
            proc.slot_adapters, proc.slot_scales = list(adapters), [list(s) if isinstance(s, list) else s
                                                                    for s in scales]
        else:
            proc.scale = scales[0]
    hid = getattr(denoiser, "encoder_hid_proj", None)
    if isinstance(hid, SlotImageProjection) and state.projection is not None:
        hid.slot_adapters = list(state.projection)


def set_slots(denoiser: Any, family: Family, slots: Sequence[Slot], on: bool = True) -> None:
    """Make ``slots`` the call's slots, each with its scale per layer (``on=False``: every scale 0, the schedule's
    "off"). A scale asked of a layer whose weights were pruned is an error, as is more than one slot, or regions,
    on a single-adapter layout (SD3)."""
    hid = getattr(denoiser, "encoder_hid_proj", None)
    if isinstance(hid, SlotImageProjection):
        hid.slot_adapters = [slot.adapter for slot in slots]
    ip = ip_processors(denoiser, family)
    for name, proc in denoiser.attn_processors.items():
        layer = name.removesuffix(".processor")
        if layer in ip:
            if not isinstance(proc, _SlotState):
                if len(slots) != 1 or slots[0].weights is not None or slots[0].adapter != 0:
                    raise RuntimeError(f"{family.ip_processor} holds one adapter: one slot, no regions")
                proc.scale = slots[0].at(layer, on)
                continue
            for slot in slots:
                if slot.scales.get(layer) and not proc.holds(slot.adapter):
                    raise RuntimeError(f"adapter {slot.adapter} was pruned from {layer}")
            proc.slot_adapters = [slot.adapter for slot in slots]
            proc.slot_scales = [slot.at(layer, on) for slot in slots]
        elif getattr(proc, "text_only", False) and any(slot.scales.get(layer) for slot in slots):
            raise RuntimeError(f"the adapters were pruned from {layer}")


@contextmanager
def slots_applied(denoiser: Any, family: Family, slots: Sequence[Slot]) -> Iterator[None]:
    """``slots`` set for the block; the slots and scales before it put back after it."""
    before = slot_state(denoiser, family)
    try:
        set_slots(denoiser, family, slots)
        yield
    finally:
        restore_slots(denoiser, before)


@contextmanager
def scales_off(denoiser: Any, family: Family) -> Iterator[None]:
    """Every slot at scale 0 for the block (diffusers then skips their image attention: the denoiser's plain pass,
    bit for bit), then each scale exactly as it was (a style schedule's or a region's included)."""
    before = slot_state(denoiser, family)
    try:
        for proc, _, scales in before.layers:
            if isinstance(proc, _SlotState):
                proc.slot_scales = [[0.0] * len(s) if isinstance(s, list) else 0.0 for s in scales]
            else:
                proc.scale = 0.0
        yield
    finally:
        restore_slots(denoiser, before)


def adapters_loaded(denoiser: Any) -> bool:
    """Whether IP-Adapters are loaded in the denoiser (their image projections are there)."""
    return bool(image_projections(denoiser))


def active_layers(denoiser: Any, family: Family) -> list[set[str]] | None:
    """Per loaded adapter, the layers that hold its weights (``None`` when no adapter is loaded)."""
    if not adapters_loaded(denoiser):
        return None
    held: list[set[str]] = [set() for _ in image_projections(denoiser)]
    for layer, proc in ip_processors(denoiser, family).items():
        for i in range(len(held)):
            if proc.holds(i) if isinstance(proc, _SlotState) else i == 0:
                held[i].add(layer)
    return held


def adapter_parameter_count(denoiser: Any) -> int:
    """Resident adapter parameters: the image projections plus every layer's adapter weights (read only)."""
    unique = {id(p): p for proj in image_projections(denoiser) for p in proj.parameters()}
    count = sum(p.numel() for p in unique.values())
    for proc in denoiser.attn_processors.values():
        if isinstance(proc, nn.Module) and (isinstance(proc, _SlotState) or hasattr(proc, "to_k_ip")):
            count += sum(p.numel() for p in proc.parameters())
    return count
