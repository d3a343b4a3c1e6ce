"""Everything requests are made with, loaded once and held in one object: ``Resources``.

The diffusers text-to-image pipeline (every mode's pipeline shares its components) with the main adapter in its
denoiser, the model's family, the adapter's kind and dims and its image encoder, the reference embeddings
(``EmbeddingStore``) and restyled photos' inversions (``InversionCache``), what requests name besides the base
model (``Extras``: ControlNets, depth models, further adapters, CLIP text towers, CSD; each loaded on first use),
the memory budget and the runtime. ``loader.load`` makes it;
the plan (``core.plan``) reads it and never changes what it holds; nothing here calls back up into the plan or the
pipeline. ``rest`` is what the denoiser's adapters look like between requests (the main adapter, its weights kept
for these layers), which a request that needs other adapters loads back after its call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.adapter import AdapterWeights
from ..core.csgo import CsgoAdapter
from ..core.embeddings import ImageEncoder, TextTower, has_clip_text_tower
from ..core.preflight import ModelInfo
from ..core.styles import EmbeddingStore, LoadedAdapter
from ..errors import UserError
from ..families import Family
from ..modes.restyle import InversionCache
from . import memory
from .extras import Extras
from .runtime import Runtime


@dataclass
class Resources:
    """The loaded models and stores requests are made with (see the module docstring)."""

    pipe: Any  # the diffusers text-to-image pipeline; every mode's pipeline shares its components
    family: Family
    adapter: AdapterWeights  # kind and dims; the weights live in the denoiser
    image_encoder: ImageEncoder
    model_id: str
    runtime: Runtime
    device: torch.device
    dtype: torch.dtype
    low_memory: bool  # image encoder off the device between uses (see ``memory``)
    embeddings: EmbeddingStore  # reference embeddings, each computed once
    extras: Extras  # what requests name besides the base model, loaded once
    budget: memory.Budget | None = None  # with ``runtime.memory_budget``
    adapter_ref: str | None = None  # the adapter as the user named it (a hub reference stays one in the PNG)
    content_text_encoder: str | None = None  # default for requests that name none
    #: The layers the main adapter keeps weights for between requests (``None``: every layer).
    rest: frozenset[str] | None = None
    #: The model's own scheduler (a request's sampler is made from its config; restyle inverts with its DDIM).
    scheduler: Any = None
    #: Restyled photos' inverted latents (``modes.restyle``); ``inversions.seconds``: the last inversion's cost.
    inversions: InversionCache = field(default_factory=InversionCache, repr=False)
    #: A CSGO checkpoint is the adapter (``adapter.kind`` ``csgo``): its tokens and layers replace the IP-Adapter's.
    csgo: CsgoAdapter | None = None
    #: Told the name of each phase (``plan.PHASES``, then ``end``) as it begins; ``None``: nobody listens.
    on_phase: Callable[[str], None] | None = field(default=None, repr=False)

    @property
    def denoiser(self) -> Any:
        """The denoising model (the UNet; a transformer in DiT families) that holds the adapter."""
        return self.family.denoiser_of(self.pipe)

    @property
    def layers(self) -> list[str]:
        """The denoiser's injectable attention layers, the units blocks resolve to."""
        return self.family.layers(self.denoiser)

    @property
    def own_scheduler(self) -> Any:
        """The model's own scheduler, whatever a call has set meanwhile."""
        return self.scheduler if self.scheduler is not None else self.pipe.scheduler

    @property
    def model_info(self) -> ModelInfo:
        """The loaded model as ``preflight.check`` takes it (a surface checks a request against it)."""
        return ModelInfo(self.family, self.denoiser, self.adapter.path)

    @property
    def text_encoders(self) -> list[Any]:
        """The pipeline's text encoders (on the device only while they encode under a memory budget)."""
        return [getattr(self.pipe, name) for name in memory.text_encoder_names(self.pipe)]

    @property
    def main_adapter(self) -> LoadedAdapter:
        return LoadedAdapter(self.adapter, self.image_encoder, self.family.negative_image)

    def phase(self, name: str) -> None:
        """Tell the listener (``on_phase``) that phase ``name`` begins."""
        if self.on_phase is not None:
            self.on_phase(name)

    def controlnet(self, ref: str) -> Any:
        """A ControlNet (checked against the denoiser), loaded once, on the pipeline's device."""
        return self.extras.controlnet(ref, self.family, self.denoiser)

    def depth_model(self, ref: str) -> Any:
        """A depth-estimation model and its processor, loaded once."""
        return self.extras.depth_model(ref)

    def further_adapter(self, ref: str) -> LoadedAdapter:
        """A further adapter's kind, dims and image encoder (its file checked against the denoiser), read once."""
        return self.extras.adapter(ref, self.family, self.denoiser, [self.image_encoder])

    def content_text_tower(self, folder: str | None = None) -> TextTower:
        """The CLIP text tower (and tokenizer) in the image encoder's space, for content prompts and scores: the one
        named (``folder``, else the pipeline's default), else one of the model's own (SDXL's ``text_encoder_2`` for
        its ViT-bigG adapter), else the image encoder's own CLIP repository's (openai/clip-vit-large-patch14 holds
        both towers: XLabs' FLUX adapters)."""
        # The image encoder's CLIP space (CSGO reads hidden states, but its encoder's projection is that space).
        want = self.image_encoder.embed_dim if self.csgo is not None else self.adapter.image_embed_dim
        folder = folder or self.content_text_encoder
        if folder is not None:
            return self.extras.text_tower(folder, want)
        for tokenizer, encoder in self.family.content_towers:
            tower = getattr(self.pipe, encoder, None)
            if tower is not None and getattr(tower.config, "projection_dim", None) == want:
                return TextTower(getattr(self.pipe, tokenizer), tower)
        own = Path(self.image_encoder.identity)
        if has_clip_text_tower(own):
            return self.extras.text_tower(str(own), want)
        raise UserError(f"content prompt needs a CLIP text encoder with {want}-d projection (the image encoder's "
                        "space); pass --content-text-encoder")

    def tower_on_device(self, folder: str | None = None) -> TextTower:
        """``content_text_tower``, brought to the device under a memory budget (``park_encoders`` takes it off)."""
        tower = self.content_text_tower(folder)
        if self.budget is not None:
            on = memory.on_device(tower.model, self.device)
            self.budget.make_room(0 if on else memory.module_bytes(tower.model))
            self.budget.bring([tower.model])
        return tower

    def park_encoders(self) -> None:
        """Under a memory budget, the text encoders the call does not run and the named text towers off the device
        (encoding is over)."""
        if self.budget is not None:
            named = [tower.model for tower in self.extras.text_towers.values()]
            self.budget.park([*(self.text_encoders if self.family.encode_prompts is not None else ()), *named])
